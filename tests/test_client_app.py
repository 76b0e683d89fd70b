"""This app's ClientApp through ClientApp's real call path (real Message/Context).

The data comes from flwr_byz.data (small generated partitions); every expected value
is computed independently with plain torch on the same partition.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from message_helpers import delivered, node_context
from torch.nn import functional as F

from clients.client_app import app
from flwr_byz.app import client_run
from flwr_byz.app.client_data import ADAPTIVE_D0_SIZE
from flwr_byz.app.config import (
    CLIENT_KEYS,
    SERVER_KEYS,
    RunConfigError,
    check_run_config,
    client_config,
)
from flwr_byz.attacks import ATTACK_DEFAULTS, adaptive_fault_gradient, label_flip
from flwr_byz.data import dataset_shape, load_partition, load_server_data
from flwr_byz.models import build_model

CFG = {"dataset": "yelp-style", "samples-per-region": 60, "seed": 0}
NUM = 5


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> None:
    client_run.clear_caches()


def _global() -> torch.nn.Module:
    f, c = dataset_shape(CFG)
    return build_model("auto", f, c, seed=3)


def _msg(
    arrays: ArrayRecord, server_round: int = 1, kind: str = MessageType.TRAIN
) -> Message:
    content = RecordDict(
        {"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}
    )
    return delivered(content, kind)


def _ctx(run_config: dict, pid: int = 2) -> Context:
    return node_context({"partition-id": pid, "num-partitions": NUM}, run_config)


def _weights(reply: Message) -> dict[str, torch.Tensor]:
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply.content["arrays"].to_torch_state_dict()


def _sgd_reference(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float
) -> dict[str, torch.Tensor]:
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    names = [n for n, _ in model.named_parameters()]
    return {
        n: (p - lr * g).detach() for n, p, g in zip(names, params, grads, strict=True)
    }


def test_one_full_batch_step_is_fedsgd() -> None:
    model = _global()
    cfg = {**CFG, "learning-rate": 0.3}
    reply = app(_msg(ArrayRecord(model.state_dict())), _ctx(cfg))
    data = load_partition(cfg, 2, NUM)
    expected = _sgd_reference(model, data.train.features, data.train.labels, 0.3)
    got = _weights(reply)
    assert list(got) == list(model.state_dict())
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=1e-5)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == data.train.labels.shape[0]
    with torch.no_grad():
        loss = F.cross_entropy(model(data.train.features), data.train.labels)
    assert metrics["train-loss"] == pytest.approx(float(loss), rel=1e-5)


def test_same_seed_same_weights_minibatch_and_many_steps() -> None:
    cfg = {**CFG, "local-steps": 3, "batch-size": 16}
    arrays = ArrayRecord(_global().state_dict())
    first = _weights(app(_msg(arrays, 4), _ctx(cfg)))
    client_run.clear_caches()
    second = _weights(app(_msg(arrays, 4), _ctx(cfg)))
    other_round = _weights(app(_msg(arrays, 5), _ctx(cfg)))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_round[k]) for k in first)


def test_evaluate_and_query_replies() -> None:
    model = _global()
    reply = app(
        _msg(ArrayRecord(model.state_dict()), kind=MessageType.EVALUATE), _ctx(CFG)
    )
    metrics = reply.content["metrics"]
    data = load_partition(CFG, 2, NUM)
    with torch.no_grad():
        logits = model(data.test.features)
    assert metrics["num-examples"] == data.test.labels.shape[0]
    assert metrics["eval-loss"] == pytest.approx(
        float(F.cross_entropy(logits, data.test.labels)), rel=1e-5
    )
    acc = float((logits.argmax(1) == data.test.labels).float().mean())
    assert metrics["eval-acc"] == pytest.approx(acc)
    query = app(_msg(ArrayRecord(), kind=MessageType.QUERY), _ctx(CFG, pid=4))
    assert dict(query.content["identity"]) == {"partition-id": 4, "num-partitions": NUM}


def test_label_flip_node_trains_on_flipped_labels() -> None:
    model = _global()
    cfg = {**CFG, "attack": "label-flip", "byzantine-partitions": "2"}
    reply = app(_msg(ArrayRecord(model.state_dict())), _ctx(cfg))
    data = load_partition(cfg, 2, NUM)
    flipped = label_flip(data.train.labels, 2)
    expected = _sgd_reference(model, data.train.features, flipped, 0.5)
    got = _weights(reply)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=1e-5)
    # An honest node of the same run is unaffected.
    honest = _weights(app(_msg(ArrayRecord(model.state_dict())), _ctx(cfg, pid=1)))
    clean = load_partition(cfg, 1, NUM)
    ref = _sgd_reference(model, clean.train.features, clean.train.labels, 0.5)
    for name, value in ref.items():
        torch.testing.assert_close(honest[name], value, atol=1e-6, rtol=1e-5)


def test_adaptive_fault_node_sends_minus_lr_times_af_gradient() -> None:
    model = _global()
    cfg = {**CFG, "attack": "adaptive-fault", "byzantine-partitions": "2"}
    reply = app(_msg(ArrayRecord(model.state_dict())), _ctx(cfg))
    data = load_partition(cfg, 2, NUM)
    qv = load_server_data({**cfg, "qv-size": ADAPTIVE_D0_SIZE}, NUM).qv
    grads = adaptive_fault_gradient(
        model,
        (qv.features, qv.labels),
        (data.train.features, data.train.labels),
        ATTACK_DEFAULTS["adaptive-alpha"],
    )
    got = _weights(reply)
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(
            got[name], (p - 0.5 * g).detach(), atol=1e-5, rtol=1e-5
        )


def test_random_fault_node_through_the_mod() -> None:
    model = _global()
    cfg = {**CFG, "attack": "random-fault", "byzantine-fraction": 0.4, "seed": 0}
    from flwr_byz.attacks import byzantine_partitions

    byz = byzantine_partitions(cfg, NUM)
    honest_pid = next(p for p in range(NUM) if p not in byz)
    sent = model.state_dict()
    attacked = _weights(app(_msg(ArrayRecord(sent)), _ctx(cfg, pid=byz[0])))
    delta = torch.cat([(attacked[k] - sent[k]).ravel() for k in sent])
    np.testing.assert_allclose(delta.numpy(), -0.5 * 0.5, atol=1e-5)
    honest = _weights(app(_msg(ArrayRecord(sent)), _ctx(cfg, pid=honest_pid)))
    assert not torch.allclose(
        torch.cat([(honest[k] - sent[k]).ravel() for k in sent]),
        torch.full_like(delta, -0.25),
        atol=1e-3,
    )


def test_client_config_defaults_and_errors() -> None:
    assert client_config({}) == {k: SERVER_KEYS[k].default for k in CLIENT_KEYS}
    for key, bad, hint in (
        ("model", "vgg", "mlp-yelp"),
        ("local-steps", 0, ">= 1"),
        ("batch-size", -1, ">= 0"),
        ("learning-rate", 0.0, "(0.0, 1000.0]"),
        ("device", "tpu", "cuda"),
    ):
        with pytest.raises(RunConfigError) as err:
            client_config({key: bad})
        assert key in str(err.value)
        assert repr(bad) in str(err.value)
        assert hint in str(err.value)
        # One check, one message: the server's check of the same key.
        with pytest.raises(RunConfigError) as server:
            check_run_config({key: bad})
        assert str(server.value) == str(err.value)


def test_deployment_node_loads_its_own_file(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / "site.npz"
    np.savez(path, features=x, label=y)
    model = build_model("mlp-yelp", 6, 2, seed=0)
    ctx = node_context({"data-path": str(path)}, {"dataset": "yelp-style"}, node_id=99)
    reply = app(_msg(ArrayRecord(model.state_dict())), ctx)
    got = _weights(reply)
    assert got["0.weight"].shape == (10, 6)
    assert reply.content["metrics"]["num-examples"] > 0
    query = app(_msg(ArrayRecord(), kind=MessageType.QUERY), ctx)
    assert dict(query.content["identity"]) == {"partition-id": -1}
