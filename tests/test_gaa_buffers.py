"""GAA, FLTrust and Zeno on a model with BatchNorm buffers (running statistics).

The clients train like ``flwr_byz.app.training``: ``model.train()``, so every honest
reply carries running statistics moved by its own batches and a
``num_batches_tracked`` counter one step ahead of the sent one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import instructions, reply, server_identity
from torch import nn

from flwr_byz.gaa import QVObjective, TrustedWorker
from flwr_byz.gaa.buffers import is_variance, weighted_coordinate_median
from flwr_byz.gaa.qv import balanced_cross_entropy
from flwr_byz.strategy import RoundStatus
from flwr_byz.strategy.fltrust import FLTrust
from flwr_byz.strategy.gaa import GAA
from flwr_byz.strategy.mean import Mean
from flwr_byz.strategy.zeno import Zeno

HONEST = [101, 102, 103, 104, 105]
BYZANTINE = [106, 107]
LR = 0.2
RUNNING = ("bn.running_mean", "bn.running_var")
PARAMS = ("conv.weight", "bn.weight", "bn.bias", "fc.weight", "fc.bias")


class BNCNN(nn.Module):
    """Conv 3x3 -> BatchNorm2d -> ReLU -> Linear on 1x4x4 inputs, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # as in ResNet
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def data(seed: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The task: class = argmax of three pixels; inputs not centred, not unit."""
    x = 2.0 + 3.0 * torch.randn(
        m, 1, 4, 4, generator=torch.Generator().manual_seed(seed)
    )
    return x, x[:, 0, 0, :3].argmax(1)


def initial() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in BNCNN().state_dict().items()}


def client_train(theta: dict[str, np.ndarray], node: int, server_round: int) -> dict:
    """One local SGD step in train mode (as flwr_byz.app.training): new weights."""
    model = BNCNN()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in theta.items()})
    model.train()
    x, y = data(node * 1000 + server_round, 32)
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p.sub_(LR * g)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def run_round(
    strategy, theta, server_round, byzantine=None, honest=HONEST, attackers=BYZANTINE
):
    """One round on real Flower messages; ``byzantine(theta, node, rnd)`` -> weights."""
    msgs = sorted(
        instructions(strategy, server_round, theta, honest + attackers),
        key=lambda m: m.metadata.dst_node_id,
    )
    sent_replies = {}
    for m in msgs:
        node = m.metadata.dst_node_id
        if node in honest:
            sent_replies[node] = client_train(theta, node, server_round)
        elif byzantine is not None:
            sent_replies[node] = byzantine(theta, node, server_round)
    replies = [
        reply(m, sent_replies[m.metadata.dst_node_id], {"num-examples": 32})
        for m in msgs
        if m.metadata.dst_node_id in sent_replies
    ]
    with server_identity():
        arrays, metrics = strategy.aggregate_train(server_round, replies)
    new = {k: arrays[k].numpy() for k in theta}
    return new, metrics, sent_replies


def honest_range(sent_replies, key, honest=HONEST):
    values = np.stack([sent_replies[n][key] for n in honest])
    return values.min(0), values.max(0)


def check_buffers(new, theta, sent_replies, honest=HONEST):
    """Float buffers finite and inside the honest replies' range; counter kept."""
    for key in RUNNING:
        assert np.isfinite(new[key]).all()
        low, high = honest_range(sent_replies, key, honest)
        assert (new[key] >= low - 1e-6).all() and (new[key] <= high + 1e-6).all(), (
            key,
            new[key],
            low,
            high,
        )
    assert (new["bn.running_var"] > 0).all()
    count = new["bn.num_batches_tracked"]
    assert count.dtype == np.int64 and count.shape == ()
    assert count == theta["bn.num_batches_tracked"]


def gaa(**kwargs) -> GAA:
    with server_identity():
        return GAA(model_factory=BNCNN, qv_set=data(7, 10), window=2, **kwargs)


@pytest.fixture(autouse=True)
def _identity():
    with server_identity():
        yield


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"backprop": "truncated"},
        {"policy": "paper"},
        {"trusted_data": data(8, 40), "trusted_lr": LR, "trusted_batch_size": 32},
    ],
    ids=["exact", "truncated", "paper", "trusted-worker"],
)
def test_gaa_trains_a_batchnorm_cnn_every_round(options):
    strategy = gaa(**options)
    theta0 = theta = initial()
    for rnd in range(1, 5):  # two episodes: the policy learns twice
        new, metrics, sent = run_round(strategy, theta, rnd)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        assert metrics["policy-updated"] == int(rnd % 2 == 0)
        assert np.isfinite(metrics["qv-loss-after"])
        check_buffers(new, theta, sent)
        theta = new
    for key in PARAMS:
        assert not np.allclose(theta[key], theta0[key]), key
    # The running statistics follow the clients' (the inputs have mean 2 and
    # standard deviation 3, the initial statistics are 0 and 1).
    for key in RUNNING:
        assert not np.allclose(theta[key], theta0[key]), key
    # The QV loss of the new model is the eval-mode loss of that model.
    model = BNCNN()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in theta.items()})
    model.eval()
    x, y = data(7, 10)
    with torch.no_grad():
        loss = float(balanced_cross_entropy(model(x), y))
    assert loss == pytest.approx(metrics["qv-loss-after"], rel=1e-4)


def _honest_params_poisoned_buffers(shift: float, param_shift: float = 0.0):
    """A Byzantine reply: an honest client's parameters (plus ``param_shift``),
    running statistics shifted by ``shift``, a huge counter."""

    def attack(theta, node, server_round):
        out = client_train(theta, node, server_round)
        for key in PARAMS:
            out[key] = out[key] + np.float32(param_shift)
        out["bn.running_mean"] = out["bn.running_mean"] - np.float32(shift)
        out["bn.running_var"] = out["bn.running_var"] + np.float32(shift)
        out["bn.num_batches_tracked"] = np.array(2**62, dtype=np.int64)
        return out

    return attack


@pytest.mark.parametrize("shift", [1e30, 3.0], ids=["huge", "honest-norm"])
def test_byzantine_buffers_do_not_take_over_gaa(shift):
    """Poisoned running statistics, huge or of an honest update's size, never
    leave the honest replies' range: buffers take the credit-weighted median."""
    strategy = gaa()
    theta = initial()
    attack = _honest_params_poisoned_buffers(shift)
    for rnd in range(1, 4):
        new, metrics, sent = run_round(strategy, theta, rnd, attack)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        assert len(metrics["node-ids"]) == len(HONEST + BYZANTINE)
        check_buffers(new, theta, sent)
        theta = new


def test_byzantine_majority_without_credit_does_not_set_the_buffers():
    """4 attackers of 7 whose parameter updates GAA refuses (+100 per weight) and
    whose running statistics are shifted by an honest-sized amount: a plain
    coordinate median would take their statistics, the credit-weighted one
    keeps the honest replies'."""
    strategy = gaa()
    theta = initial()
    honest, attackers = [101, 102, 103], [104, 105, 106, 107]
    attack = _honest_params_poisoned_buffers(3.0, param_shift=100.0)
    for rnd in range(1, 4):
        new, metrics, sent = run_round(strategy, theta, rnd, attack, honest, attackers)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        credit = dict(zip(metrics["node-ids"], metrics["weights"], strict=True))
        assert sum(credit[n] for n in attackers) < 1e-3
        check_buffers(new, theta, sent, honest)
        theta = new


def test_fltrust_on_a_batchnorm_cnn_with_poisoned_buffers():
    """FLTrust used to fail every round (no gradient through running stats);
    its norm rescaling bounds a huge buffer update."""
    with server_identity():
        strategy = FLTrust(
            model_factory=BNCNN, root_set=data(8, 40), trusted_lr=LR, trusted_steps=1
        )
    theta0 = theta = initial()
    attack = _honest_params_poisoned_buffers(1e30)
    for rnd in range(1, 4):
        new, metrics, _ = run_round(strategy, theta, rnd, attack)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        assert metrics["server-update-norm"] > 0
        for key in RUNNING:
            assert np.isfinite(new[key]).all()
            assert np.abs(new[key] - theta[key]).max() < 10.0
        assert (new["bn.running_var"] > 0).all()
        assert new["bn.num_batches_tracked"] == theta["bn.num_batches_tracked"]
        theta = new
    for key in PARAMS + RUNNING:
        assert not np.allclose(theta[key], theta0[key]), key


def test_zeno_on_a_batchnorm_cnn_discards_poisoned_buffers():
    """Without the norm penalty (rho = 0) only the loss can find the attackers:
    it is evaluated in eval mode with each reply's own running statistics."""
    with server_identity():
        strategy = Zeno(
            model_factory=BNCNN,
            qv_set=data(8, 40),
            num_malicious_nodes=2,
            rho=0.0,
            batch_size=None,
            seed=1,
        )
    theta = initial()
    attack = _honest_params_poisoned_buffers(1e30)
    for rnd in range(1, 3):
        new, metrics, sent = run_round(strategy, theta, rnd, attack)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        assert sorted(metrics["suspected-node-ids"]) == BYZANTINE
        check_buffers(new, theta, sent)
        theta = new


def test_trusted_worker_trains_batchnorm_like_a_client():
    """Δ_s = one train-mode SGD step: batch statistics in the forward pass, the
    running statistics moved as BatchNorm moves them, the counter untouched."""
    theta = initial()
    x, y = data(9, 16)
    worker = TrustedWorker(BNCNN, (x, y), lr=LR, steps=1)
    obj = worker.objective
    flat = obj.flatten({k: torch.as_tensor(v) for k, v in theta.items()})
    new = flat + worker.update(flat, torch.Generator().manual_seed(0))

    model = BNCNN()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in theta.items()})
    model.train()
    loss = balanced_cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p.sub_(LR * g)
    expected = obj.flatten(model.state_dict())
    torch.testing.assert_close(new, expected, rtol=1e-5, atol=1e-6)
    # The worker's own model stays in eval mode; its counter is not shared state.
    assert not obj.model.training
    assert int(obj.fixed["bn.num_batches_tracked"]) == 0


def test_qv_objective_is_the_eval_mode_loss_and_ignores_buffer_gradients():
    theta = initial()
    obj = QVObjective(BNCNN, data(7, 10))
    state = {k: torch.as_tensor(v) for k, v in theta.items()}
    state["bn.running_mean"] = torch.full((4,), 2.0)
    state["bn.running_var"] = torch.full((4,), 9.0)
    flat = obj.flatten(state)
    model = BNCNN()
    model.load_state_dict(state)
    model.eval()
    x, y = data(7, 10)
    value, grad = obj.value_and_grad(flat)
    with torch.no_grad():
        expected = float(balanced_cross_entropy(model(x), y))
    assert float(value) == pytest.approx(expected, rel=1e-5)
    mask = obj.buffer_mask
    assert int(mask.sum()) == 8  # running mean and variance of 4 channels
    assert torch.all(grad[mask] == 0) and grad[~mask].abs().sum() > 0
    two = obj.batch(torch.stack([flat, flat]))
    torch.testing.assert_close(two, value.expand(2))


def test_weighted_coordinate_median():
    v = torch.tensor([[1.0, 5.0], [2.0, -1.0], [1e30, 1e30], [3.0, 0.0]])
    # Uniform weights, even n: the mean of the two middle values (numpy's median).
    np.testing.assert_allclose(
        weighted_coordinate_median(v, torch.full((4,), 0.25)).numpy(),
        np.median(v.numpy(), axis=0),
    )
    # Credit decides: the rows holding more than half the weight bound the result.
    w = torch.tensor([0.3, 0.3, 0.35, 0.05])
    out = weighted_coordinate_median(v, w)
    assert out.tolist() == [2.0, 5.0]
    # A zero-weight row is never chosen, whatever its value.
    w = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert weighted_coordinate_median(v, w).tolist() == [1.5, 2.0]
    # No overflow on huge finite values.
    big = torch.tensor([[3e38], [3e38]])
    assert torch.isfinite(weighted_coordinate_median(big, torch.ones(2)))


def _negative_statistics(theta, node, server_round):
    """A Byzantine reply: honest parameters, running variances of -50, a
    negative counter."""
    out = client_train(theta, node, server_round)
    out["bn.running_var"] = np.full_like(out["bn.running_var"], -50.0)
    out["bn.num_batches_tracked"] = np.array(-5, dtype=np.int64)
    return out


def _eval_loss(theta) -> float:
    model = BNCNN()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in theta.items()})
    model.eval()
    x, y = data(7, 10)
    with torch.no_grad():
        return float(balanced_cross_entropy(model(x), y))


def test_a_negative_running_var_never_freezes_gaa():
    """The global model arrives with a negative running_var (a bad buffer) and
    two attackers keep sending negative ones: every round aggregates, the
    model moves, and from round 1 on its variances are >= 0 and its eval-mode
    loss finite. (A negative variance made the QV loss NaN, and so every later
    round NON_FINITE_RESULT with the model never moving again.)"""
    strategy = gaa()
    theta0 = theta = initial()
    theta["bn.running_var"] = np.full_like(theta["bn.running_var"], -1.0)
    assert not np.isfinite(_eval_loss(theta))
    for rnd in range(1, 5):
        new, metrics, _ = run_round(strategy, theta, rnd, _negative_statistics)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        assert np.isfinite(metrics["qv-loss-after"])
        assert (new["bn.running_var"] >= 0).all(), new["bn.running_var"]
        assert np.isfinite(_eval_loss(new))
        assert new["bn.num_batches_tracked"] == theta["bn.num_batches_tracked"] >= 0
        theta = new
    for key in PARAMS:
        assert not np.allclose(theta[key], theta0[key]), key


def test_attackers_cannot_push_a_running_var_below_zero_through_the_mean():
    """FedAvg's mean follows two attackers' running_var of -50 below zero; the
    server step keeps every running variance >= 0 (a negative one would turn
    every eval-mode output NaN) and the counter as sent."""
    with server_identity():
        strategy = Mean()
    theta = initial()
    for rnd in range(1, 4):
        new, metrics, sent = run_round(strategy, theta, rnd, _negative_statistics)
        assert metrics["status"] == int(RoundStatus.OK), strategy.history[-1].message
        mean = np.mean([sent[n]["bn.running_var"] for n in sent], axis=0)
        assert (mean < 0).all()  # what the rule asked for
        assert (new["bn.running_var"] >= 0).all(), new["bn.running_var"]
        assert np.isfinite(_eval_loss(new))
        assert new["bn.num_batches_tracked"] == theta["bn.num_batches_tracked"] >= 0
        assert new["bn.num_batches_tracked"].dtype == np.int64
        theta = new


def test_is_variance():
    assert is_variance("bn.running_var") and is_variance("layer1.0.bn1.running_var")
    assert not is_variance("bn.running_mean") and not is_variance("running_variance")
