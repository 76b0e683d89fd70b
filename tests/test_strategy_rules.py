"""The concrete strategies on real replies: robustness, diagnostics, parity (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import strategy_helpers as sh
import torch
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.serverapp import strategy as flwr_strategies

from flwr_byz import strategy as strategies
from flwr_byz.strategy.legacy import LegacyRobust

NODES = [101, 102, 103, 104, 105, 106, 107]
BYZANTINE = {106, 107}


@pytest.fixture(autouse=True)
def _identity():
    with sh.server_identity():
        yield


def _honest_steps(d: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        n: (0.5 + 0.2 * rng.standard_normal(d)).astype(np.float32)
        for n in NODES
        if n not in BYZANTINE
    }


def _round(strategy, theta, steps, server_round=1, byz_shift=100.0):
    msgs = sh.instructions(strategy, server_round, theta, NODES)
    replies = []
    for m in msgs:
        node = m.metadata.dst_node_id
        step = steps[node] if node in steps else np.float32(byz_shift)
        replies.append(
            sh.reply(
                m, sh.shifted(theta, step), {"num-examples": 10, "train-loss": 1.0}
            )
        )
    return strategy.aggregate_train(server_round, replies)


ROBUST = [
    (strategies.FABA, {"num_malicious_nodes": 2}),
    (strategies.Krum, {"num_malicious_nodes": 2}),
    (strategies.MultiKrum, {"num_malicious_nodes": 2}),
    (strategies.Bulyan, {"num_malicious_nodes": 1}),  # 4f + 3 <= 7
    (strategies.GeoMed, {"num_malicious_nodes": 2}),
    (strategies.GeoMed, {"num_malicious_nodes": 2, "method": "weiszfeld"}),
    (strategies.Median, {}),
    (strategies.TrimmedMean, {"beta": 0.3}),
    (strategies.BruteForce, {"num_malicious_nodes": 2}),
]


@pytest.mark.parametrize(
    ("cls", "kwargs"), ROBUST, ids=[f"{c.__name__}-{k}" for c, k in ROBUST]
)
def test_robust_rules_stay_near_the_honest_mean(cls, kwargs):
    theta = sh.model_arrays(0)
    steps = _honest_steps(15)
    arrays, metrics = _round(cls(**kwargs), theta, steps)
    honest = np.stack(list(steps.values())).astype(np.float64)
    moved = sh.record_flat(arrays) - sh.flat(theta)
    assert metrics["status"] == int(strategies.RoundStatus.OK)
    assert np.abs(moved - honest.mean(0)).max() < 1.0
    if kwargs.get("method") != "weiszfeld":  # a geometric median is only pulled less
        # Inside the honest updates' per-coordinate range: no pull from the +100s.
        assert (moved >= honest.min(0) - 1e-5).all()
        assert (moved <= honest.max(0) + 1e-5).all()


@pytest.mark.parametrize(
    "cls", [strategies.FABA, strategies.MultiKrum, strategies.BruteForce]
)
def test_subset_rules_give_exactly_the_honest_mean(cls):
    theta = sh.model_arrays(1)
    steps = _honest_steps(15, seed=1)
    arrays, metrics = _round(cls(num_malicious_nodes=2), theta, steps)
    honest_mean = np.stack(list(steps.values())).astype(np.float64).mean(0)
    np.testing.assert_allclose(
        sh.record_flat(arrays) - sh.flat(theta), honest_mean, atol=1e-5
    )
    assert set(metrics["selected-node-ids"]) == set(NODES) - BYZANTINE
    assert set(metrics["removed-node-ids"]) == BYZANTINE


def test_faba_reports_removal_order_and_scores_by_node():
    theta = sh.model_arrays(2)
    steps = _honest_steps(15, seed=2)
    strategy = strategies.FABA(num_malicious_nodes=2)
    msgs = sh.instructions(strategy, 1, theta, NODES)
    replies = []
    for m in msgs:
        node = m.metadata.dst_node_id
        shift = {106: 50.0, 107: 100.0}.get(node)
        replies.append(
            sh.reply(
                m,
                sh.shifted(theta, steps[node] if shift is None else np.float32(shift)),
                {"num-examples": 1},
            )
        )
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["removed-node-ids"] == [107, 106]  # farthest first
    assert len(metrics["node-ids"]) == len(metrics["weights"]) == 7
    report = strategy.history[-1]
    assert report.removed == [107, 106] and report.f == 2


def test_mean_is_poisoned():
    theta = sh.model_arrays(3)
    arrays, _ = _round(strategies.Mean(), theta, _honest_steps(15))
    assert (sh.record_flat(arrays) - sh.flat(theta)).min() > 20


def test_bulyan_bound_failure_keeps_model():
    theta = sh.model_arrays(3)
    arrays, metrics = _round(
        strategies.Bulyan(num_malicious_nodes=2), theta, _honest_steps(15)
    )
    np.testing.assert_array_equal(sh.record_flat(arrays), sh.flat(theta))
    assert metrics["bound-failed"] == 1 and metrics["min-nodes"] == 11


def _flower_replies(theta, steps, nodes):
    """Replies as Flower's strategies need them (each also valid for ours)."""
    strategy = strategies.Mean()
    msgs = sh.instructions(strategy, 1, theta, nodes)
    return [
        sh.reply(
            m,
            sh.shifted(
                theta,
                steps[m.metadata.dst_node_id]
                if m.metadata.dst_node_id in steps
                else np.float32(100),
            ),
            {"num-examples": 10},
        )
        for m in msgs
    ]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (
            strategies.Krum(num_malicious_nodes=2),
            flwr_strategies.Krum(num_malicious_nodes=2),
        ),
        (
            strategies.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=3),
            flwr_strategies.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=3),
        ),
        (strategies.Median(), flwr_strategies.FedMedian()),
        (strategies.TrimmedMean(beta=0.3), flwr_strategies.FedTrimmedAvg(beta=0.3)),
    ],
    ids=["krum", "multikrum", "median", "trimmed-mean"],
)
# Bulyan is left out on purpose: Flower scores Krum once, ours re-scores after
# each choice as in the paper (DESIGN §4), so the chosen sets may differ.
def test_same_model_as_flower_on_wellformed_replies(ours, theirs):
    theta = sh.model_arrays(4)
    steps = _honest_steps(15, seed=4)
    msgs = sh.instructions(ours, 1, theta, NODES)

    def make():
        return [
            sh.reply(
                m,
                sh.shifted(theta, steps.get(m.metadata.dst_node_id, np.float32(100))),
                {"num-examples": 10},
            )
            for m in msgs
        ]

    ours_arrays, _ = ours.aggregate_train(1, make())
    theirs_arrays, _ = theirs.aggregate_train(1, make())
    np.testing.assert_allclose(
        sh.record_flat(ours_arrays), sh.record_flat(theirs_arrays), atol=1e-5
    )


def test_one_malformed_reply_crashes_flower_krum_not_ours():
    theta = sh.model_arrays(5)
    steps = _honest_steps(15)
    ours = strategies.Krum(num_malicious_nodes=2)
    msgs = sh.instructions(ours, 1, theta, NODES)
    replies = [
        sh.reply(
            m,
            sh.shifted(theta, steps.get(m.metadata.dst_node_id, np.float32(100))),
            {"num-examples": 10},
        )
        for m in msgs[:-1]
    ]
    bad = sh.model_arrays(5)
    del bad["b"]
    replies.append(sh.reply(msgs[-1], bad, {"num-examples": 10}))
    with pytest.raises(Exception):  # noqa: B017 - Flower raises its own error type
        flwr_strategies.Krum(num_malicious_nodes=2).aggregate_train(1, replies)
    arrays, metrics = ours.aggregate_train(1, replies)
    assert metrics["rejected-reasons"] == [int(strategies.RejectReason.MISSING_KEYS)]
    assert np.isfinite(sh.record_flat(arrays)).all()


def test_strategies_registry_and_summary(caplog):
    assert set(strategies.STRATEGIES) >= {
        "faba",
        "krum",
        "multikrum",
        "bulyan",
        "geomed",
        "median",
        "trimmed-mean",
        "brute-force",
        "mean",
    }
    import logging

    with caplog.at_level(logging.INFO):
        strategies.TrimmedMean(beta=0.1).summary()
        strategies.FABA(malicious_fraction=0.25).summary()
    assert "beta: 0.1" in caplog.text and "floor(0.25" in caplog.text


def test_summary_does_not_contradict_itself_on_weighting(caplog):
    import logging

    with caplog.at_level(logging.INFO):
        strategies.FABA(num_malicious_nodes=1).summary()
    text = caplog.text
    assert "Training aggregation: unweighted" in text
    assert "Weighted by: 'num-examples'" not in text  # FedAvg's line, untrue here
    assert "Evaluation metrics weighted by: 'num-examples'" in text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        strategies.Mean(weighted_aggregation=True).summary()
    assert "Training aggregation: weighted by clients' 'num-examples'" in caplog.text


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (
            strategies.Krum,
            {"weighted_aggregation": True, "num_malicious_nodes": 1},
            "weighted_aggregation",
        ),
        (strategies.FABA, {}, "num_malicious_nodes"),
        (strategies.Krum, {}, "malicious_fraction"),
        (
            strategies.BruteForce,
            {"num_malicious_nodes": 1, "malicious_fraction": 0.1},
            "malicious_fraction",
        ),
        (strategies.GeoMed, {"method": "mean", "num_malicious_nodes": 1}, "method"),
        (strategies.TrimmedMean, {"beta": 0.5}, "beta"),
        (
            strategies.MultiKrum,
            {"num_nodes_to_select": 0, "num_malicious_nodes": 1},
            "num_nodes_to_select",
        ),
        (
            strategies.BruteForce,
            {"max_subsets": 0, "num_malicious_nodes": 1},
            "max_subsets",
        ),
    ],
)
def test_rule_configuration_errors(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_rules_without_budget_need_none():
    assert (
        strategies.Median().resolve_f(10) == 0 and strategies.Mean().resolve_f(10) == 0
    )
    assert strategies.TrimmedMean(beta=0.1, malicious_fraction=0.3).resolve_f(10) == 3


# ------------------------------------------------------------------ legacy API
class _Proxy(ClientProxy):
    """Minimal legacy client proxy: only its ids are read by aggregate_fit."""

    def __init__(self, node_id: int) -> None:
        super().__init__(cid=str(node_id))
        self.node_id = node_id

    def get_properties(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError


@pytest.mark.parametrize(
    "make",
    [
        lambda: strategies.FABA(num_malicious_nodes=2),
        lambda: strategies.Krum(num_malicious_nodes=2),
        lambda: strategies.Median(),
        lambda: strategies.GeoMed(num_malicious_nodes=2),
    ],
    ids=["faba", "krum", "median", "geomed"],
)
def test_legacy_gives_the_same_aggregate_as_the_message_api(make):
    theta = sh.model_arrays(6)
    steps = _honest_steps(15, seed=6)
    keys = list(theta)
    modern = make()
    msgs = sh.instructions(modern, 1, theta, NODES)
    models = {
        m.metadata.dst_node_id: sh.shifted(
            theta, steps.get(m.metadata.dst_node_id, np.float32(100))
        )
        for m in msgs
    }
    replies = [
        sh.reply(m, models[m.metadata.dst_node_id], {"num-examples": 3}) for m in msgs
    ]
    arrays, metrics = modern.aggregate_train(1, replies)

    legacy = LegacyRobust(make())
    sent = ndarrays_to_parameters([theta[k] for k in keys])
    # Same row order as the Message-API round, so float sums agree bit for bit.
    clients = [_Proxy(m.metadata.dst_node_id) for m in msgs]
    legacy.remember_sent(1, sent, clients)
    ok = Status(code=Code.OK, message="")
    results = [
        (
            c,
            FitRes(
                ok, ndarrays_to_parameters([models[c.node_id][k] for k in keys]), 3, {}
            ),
        )
        for c in clients
    ]
    bad_proxy = _Proxy(999)
    junk = Parameters([b"junk"], "numpy.ndarray")
    results.append((bad_proxy, FitRes(ok, junk, 3, {})))
    params, legacy_metrics = legacy.aggregate_fit(1, results, [RuntimeError("lost")])
    got = parameters_to_ndarrays(params)
    for i, key in enumerate(keys):
        np.testing.assert_array_equal(got[i], arrays[key].numpy())
    # Lists travel as Flower's native list values, not JSON strings.
    assert legacy_metrics["removed-node-ids"] == list(metrics["removed-node-ids"])
    assert legacy_metrics["num-failures"] == 1
    assert legacy_metrics["rejected-node-ids"] == [999]
    assert legacy_metrics["suspected-node-ids"] == list(metrics["suspected-node-ids"])
    assert legacy.strategy.history[-1].rejected == [(999, "UNEXPECTED_NODE")]


def test_legacy_bound_failure_returns_the_sent_parameters():
    theta = sh.model_arrays(7)
    legacy = LegacyRobust(strategies.FABA(num_malicious_nodes=3))
    sent = ndarrays_to_parameters(list(theta.values()))
    legacy.remember_sent(2, sent, [_Proxy(1), _Proxy(2)])
    params, metrics = legacy.aggregate_fit(2, [], [])
    assert params is sent
    assert metrics["bound-failed"] == 1
    assert metrics["node-ids"] == []
    as_json = LegacyRobust(strategies.FABA(num_malicious_nodes=3), lists_as_json=True)
    as_json.remember_sent(2, sent, [_Proxy(1), _Proxy(2)])
    assert as_json.aggregate_fit(2, [], [])[1]["node-ids"] == "[]"


def test_error_reply_in_message_api_counts_as_rejected():
    theta = sh.model_arrays(8)
    strategy = strategies.Median()
    msgs = sh.instructions(strategy, 1, theta, [1, 2, 3])
    replies = [
        sh.reply(msgs[0], sh.shifted(theta, 1.0), {"a": 1}),
        sh.reply(msgs[1], sh.shifted(theta, 2.0), {"a": 1}),
        sh.error_reply(msgs[2]),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 1.5, atol=1e-6)
    assert metrics["rejected-reasons"] == [int(strategies.RejectReason.ERROR_REPLY)]
    failed = msgs[2].metadata.dst_node_id
    assert metrics["rejected-node-ids"] == [failed]
    assert sorted(metrics["node-ids"]) == sorted(
        m.metadata.dst_node_id for m in msgs[:2]
    )


class _Transposed(torch.nn.Module):
    """Linear43's parameter count with another shape: (3, 4) weights."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3, 4))
        self.b = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        return x @ self.w.T + self.b


@pytest.mark.parametrize(
    ("model", "status"),
    [
        (sh.Linear43, strategies.RoundStatus.OK),
        (_Transposed, strategies.RoundStatus.AGGREGATION_FAILED),
    ],
)
def test_legacy_rounds_check_the_server_model_against_the_sent_layout(model, status):
    """The layout sent reaches the rule under LegacyRobust too: a server-side model
    whose arrays do not fit the Parameters is refused, not read in the wrong shape."""
    theta = sh.model_arrays(9)
    inner = strategies.FLTrust(model_factory=model, root_set=sh.linear43_data(3, 12))
    legacy = LegacyRobust(inner)
    sent = ndarrays_to_parameters(list(theta.values()))
    clients = [_Proxy(1), _Proxy(2)]
    legacy.remember_sent(1, sent, clients)
    ok = Status(code=Code.OK, message="")
    # The clients move along the server's own update (a constant shift would be
    # orthogonal to it: cross-entropy's gradient sums to zero over the classes,
    # and its cosine's sign would be rounding noise).
    flat = np.concatenate([v.ravel() for v in theta.values() if v.dtype.kind == "f"])
    delta = inner.server_update(1, torch.from_numpy(flat)).numpy()
    results = [
        (
            c,
            FitRes(
                ok,
                ndarrays_to_parameters(list(sh.shifted(theta, s * delta).values())),
                3,
                {},
            ),
        )
        for c, s in zip(clients, (0.5, 1.0), strict=True)
    ]
    _, metrics = legacy.aggregate_fit(1, results, [])
    report = inner.history[-1]
    assert report.status == status and metrics["status"] == int(status)
    # The wrapped strategy carries the round's state on (its matrix storage).
    assert inner.round_state.buffer is not None
    if status != strategies.RoundStatus.OK:
        assert "model_factory" in report.message
