"""flwr_byz.strategy.GAA on real Flower messages (no simulation engine)."""

from __future__ import annotations

import numpy as np
import pytest
import strategy_helpers as sh
import torch
from torch import nn

from flwr_byz.strategy import STRATEGIES, RoundStatus
from flwr_byz.strategy.gaa import GAA

NODES = [101, 102, 103, 104, 105, 106, 107]
BYZANTINE = {106, 107}


def qv_set(m: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    return sh.linear43_data(3, m)


@pytest.fixture(autouse=True)
def _identity():
    with sh.server_identity():
        yield


def honest_step(theta: dict, node: int, server_round: int) -> np.ndarray:
    """−λ·∇ of the loss on the node's own data (same task as the QV set)."""
    g = torch.Generator().manual_seed(node * 100 + server_round)
    x = torch.randn(32, 4, generator=g)
    model = sh.Linear43()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in theta.items()})
    loss = nn.functional.cross_entropy(model(x), x[:, :3].argmax(1))
    gw, gb = torch.autograd.grad(loss, [model.w, model.b])
    return -0.5 * torch.cat([gw.reshape(-1), gb]).numpy()


def run_round(
    strategy: GAA, theta: dict, server_round: int, nodes=NODES, repliers=None
):
    # Rows in node-id order, so that two runs see identical matrices.
    msgs = sorted(
        sh.instructions(strategy, server_round, theta, nodes),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = []
    for m in msgs:
        node = m.metadata.dst_node_id
        if repliers is not None and node not in repliers:
            continue
        step = (
            np.float32(100.0)
            if node in BYZANTINE
            else honest_step(theta, node, server_round)
        )
        replies.append(sh.reply(m, sh.shifted(theta, step), {"num-examples": 10}))
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    new = {k: arrays[k].numpy() for k in theta}
    return new, metrics


def test_registered_under_its_run_config_name():
    assert STRATEGIES["gaa"] is GAA


def test_round_moves_by_credit_weighted_updates_and_reports_credits():
    strategy = GAA(model_factory=sh.Linear43, qv_set=qv_set(), window=2)
    theta = sh.model_arrays(0)
    new, metrics = run_round(strategy, theta, 1)
    assert metrics["status"] == int(RoundStatus.OK)
    ids, weights = metrics["node-ids"], metrics["weights"]
    assert abs(sum(weights) - 1.0) < 1e-5
    byz = sum(w for n, w in zip(ids, weights, strict=True) if n in BYZANTINE)
    assert byz < 1e-6  # a +100 update gets no credit in the first round
    credits = dict(zip(metrics["credit-node-ids"], metrics["credits"], strict=True))
    assert sorted(credits) == NODES and abs(sum(credits.values()) - 1) < 1e-6
    assert metrics["policy-updated"] == 0
    assert metrics["reward"] == pytest.approx(
        metrics["qv-loss-before"] - metrics["qv-loss-after"], abs=1e-6
    )
    # θ_{t+1} = θ_t + Σ α_i Δ_i
    expected = sh.record_flat(_rec(theta)) + sum(
        w * (np.float64(100.0) if n in BYZANTINE else honest_step(theta, n, 1))
        for n, w in zip(ids, weights, strict=True)
    )
    np.testing.assert_allclose(sh.record_flat(_rec(new)), expected, atol=1e-5)
    assert new["count"] == theta["count"]
    _, metrics2 = run_round(strategy, new, 2)
    assert metrics2["policy-updated"] == 1
    assert sorted(strategy.detect(2)) == sorted(BYZANTINE)


def _rec(arrays):
    return sh.to_record(arrays)


def test_nodes_dropping_out_and_returning():
    strategy = GAA(model_factory=sh.Linear43, qv_set=qv_set(1))  # one QV sample
    theta = sh.model_arrays(0)
    theta, _ = run_round(strategy, theta, 1)
    present = {101, 102, 103, 106}
    theta, metrics = run_round(strategy, theta, 2, repliers=present)
    assert metrics["num-missing"] == 3 and sorted(metrics["node-ids"]) == sorted(
        present
    )
    assert abs(sum(metrics["weights"]) - 1.0) < 1e-5
    assert sorted(metrics["credit-node-ids"]) == NODES  # absent nodes kept
    theta, metrics = run_round(strategy, theta, 3)  # everyone is back
    assert metrics["num-valid"] == len(NODES)
    credits = dict(zip(metrics["credit-node-ids"], metrics["credits"], strict=True))
    assert sum(credits[n] for n in BYZANTINE) < 1e-6


def test_save_load_continue_through_the_strategy():
    theta0 = sh.model_arrays(0)

    def make():
        return GAA(
            model_factory=sh.Linear43,
            qv_set=qv_set(),
            window=2,
            trusted_data=qv_set(20),
            trusted_lr=0.5,
            trusted_batch_size=8,
        )

    full, theta = make(), theta0
    trace = []
    for r in (1, 2, 3):
        theta, m = run_round(full, theta, r)
        trace.append((m["weights"], m["credits"], m["trusted-credit"]))
    first, theta = make(), theta0
    theta, _ = run_round(first, theta, 1)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    for r in (2, 3):
        theta, m = run_round(resumed, theta, r)
        assert (m["weights"], m["credits"], m["trusted-credit"]) == trace[r - 1]


def test_model_factory_that_does_not_match_keeps_the_model():
    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Parameter(torch.zeros(3))
            self.w = nn.Parameter(torch.zeros(4, 3))

        def forward(self, x):  # pragma: no cover - never reached
            return x @ self.w + self.b

    strategy = GAA(model_factory=Other, qv_set=qv_set())
    theta = sh.model_arrays(0)
    new, metrics = run_round(strategy, theta, 1)
    assert metrics["status"] == int(RoundStatus.AGGREGATION_FAILED)
    np.testing.assert_array_equal(new["w"], theta["w"])


def test_configuration_errors():
    with pytest.raises(ValueError, match="max_paper_policy_params"):
        GAA(
            model_factory=sh.Linear43,
            qv_set=qv_set(),
            policy="paper",
            max_paper_policy_params=10,
        )
    with pytest.raises(ValueError, match="policy"):
        GAA(model_factory=sh.Linear43, qv_set=qv_set(), policy="greedy")
    with pytest.raises(ValueError, match="model_factory"):
        GAA(model_factory=None, qv_set=qv_set())
    with pytest.raises(ValueError, match="qv_set"):
        GAA(model_factory=sh.Linear43, qv_set="data.csv")
    with pytest.raises(ValueError, match="weighted_aggregation"):
        GAA(model_factory=sh.Linear43, qv_set=qv_set(), weighted_aggregation=True)


def test_paper_policy_runs_through_the_strategy():
    strategy = GAA(model_factory=sh.Linear43, qv_set=qv_set(), policy="paper", window=2)
    theta = sh.model_arrays(0)
    for r in (1, 2):
        theta, metrics = run_round(strategy, theta, r)
        assert metrics["status"] == int(RoundStatus.OK)
        assert abs(sum(metrics["weights"]) - 1.0) < 1e-5


def test_server_momentum_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="server_momentum"):
        GAA(model_factory=sh.Linear43, qv_set=qv_set(), server_momentum=0.9)


def _episodes(rounds: int, episodes: int) -> tuple[GAA, list]:
    """Run ``episodes`` trainings of ``rounds`` rounds, each from the same θ₀."""
    strategy = GAA(model_factory=sh.Linear43, qv_set=qv_set(), window=2)
    trace = []
    for _ in range(episodes):
        theta = sh.model_arrays(0)
        for r in range(1, rounds + 1):
            theta, m = run_round(strategy, theta, r)
            trace.append((m["episode"], m["weights"], m["credits"], theta))
    return strategy, trace


def test_a_new_episode_restarts_the_model_and_carries_policy_and_credits():
    strategy, _ = _episodes(rounds=3, episodes=1)
    psi = {k: v.clone() for k, v in strategy.agent.policy.state_dict().items()}
    credits = strategy.agent.credits()
    assert strategy.agent.position == 1  # round 3 opened a window of T = 2
    logits = dict(strategy.agent.logits)
    # Round 1 again: a second training from θ₀, the paper's next episode.
    sh.instructions(strategy, 1, sh.model_arrays(0), NODES)
    # α carries over (the global shift after a policy step changes no credit).
    assert strategy.agent.logits.keys() == logits.keys()
    torch.testing.assert_close(
        torch.softmax(torch.stack(list(strategy.agent.logits.values())), 0),
        torch.softmax(torch.stack(list(logits.values())), 0),
    )
    assert strategy.agent.episode == 2
    # The cut window (round 3) taught ψ, and is not chained to the new θ₀.
    changed = [
        k
        for k, v in strategy.agent.policy.state_dict().items()
        if not torch.equal(v, psi[k])
    ]
    assert changed and strategy.agent.position == 0
    _, m = run_round(strategy, sh.model_arrays(0), 1)  # configures again: idempotent
    assert m["episode"] == 2 and strategy.agent.episode == 2
    assert sum(c for n, c in credits.items() if n in BYZANTINE) < 1e-6
    assert set(strategy.detect(2)) == BYZANTINE


def test_episodes_repeat_bit_for_bit():
    _, a = _episodes(rounds=3, episodes=2)
    _, b = _episodes(rounds=3, episodes=2)
    assert [e for e, *_ in a] == [1, 1, 1, 2, 2, 2]
    for (ea, wa, ca, ta), (eb, wb, cb, tb) in zip(a, b, strict=True):
        assert (ea, wa, ca) == (eb, wb, cb)
        for k in ta:
            np.testing.assert_array_equal(ta[k], tb[k])
