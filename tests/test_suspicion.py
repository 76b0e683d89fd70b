"""``suspected-node-ids``: one rule-independent answer to "who attacked?" (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_helpers import instructions, model_arrays, reply, server_identity, shifted

from flwr_byz.strategy import FABA, Bulyan, Krum, Mean, Median, MultiKrum, TrimmedMean
from flwr_byz.strategy.suspicion import median_distances, outlier_rows, suspected_rows

NODES = list(range(201, 221))  # 20 nodes
ATTACKERS = {203, 208, 211, 219}  # 20 %


@pytest.fixture(autouse=True)
def _identity():
    with server_identity():
        yield


def _round(strategy, attack: str | None):
    theta = model_arrays(3)
    d = sum(v.size for v in theta.values() if v.dtype.kind == "f")
    rng = np.random.default_rng(11)
    # Heterogeneous honest updates: a common direction plus per-node noise.
    common = rng.standard_normal(d).astype(np.float32)
    msgs = instructions(strategy, 1, theta, NODES)
    replies = []
    for m in msgs:
        node = m.metadata.dst_node_id
        step = (common + 0.5 * rng.standard_normal(d)).astype(np.float32)
        if attack is not None and node in ATTACKERS:
            step = -step if attack == "sign-flip" else 10.0 * step
        replies.append(reply(m, shifted(theta, 0.1 * step), {"num-examples": 1}))
    _, metrics = strategy.aggregate_train(1, replies)
    return metrics


RULES = [
    lambda: FABA(num_malicious_nodes=4),
    lambda: Krum(num_malicious_nodes=4),
    lambda: MultiKrum(num_malicious_nodes=4),
    lambda: Bulyan(num_malicious_nodes=4),
    Mean,
    Median,
    lambda: TrimmedMean(beta=0.2),
]


@pytest.mark.parametrize("make", RULES)
def test_no_attack_nobody_suspected_though_the_rule_removes(make) -> None:
    metrics = _round(make(), attack=None)
    assert metrics["suspected-node-ids"] == []


@pytest.mark.parametrize("make", RULES)
@pytest.mark.parametrize("attack", ["sign-flip", "scaling"])
def test_attackers_are_the_suspected_whatever_the_rule(make, attack) -> None:
    metrics = _round(make(), attack)
    assert set(metrics["suspected-node-ids"]) == ATTACKERS


def test_krum_removes_n_minus_1_but_suspects_none() -> None:
    metrics = _round(Krum(num_malicious_nodes=4), attack=None)
    assert len(metrics["removed-node-ids"]) == len(NODES) - 1
    assert metrics["suspected-node-ids"] == []


def test_outlier_rule_on_plain_scores() -> None:
    assert outlier_rows(np.array([1.0, 1.1, 0.9, 1.05, 5.0])) == [4]
    assert outlier_rows(np.array([1.0, 1.0, 1.0, 1.0])) == []  # MAD 0: no noise flag
    assert outlier_rows(np.array([1.0, 1.0, 1.0, 1.001])) == []
    assert outlier_rows(np.array([1.0, np.inf, 1.0, 1.02])) == [1]
    assert outlier_rows(np.array([1.0, 9.0])) == []  # too few to tell


def test_overflowing_difference_is_suspected() -> None:
    x = torch.zeros(5, 3)
    x[:4] += torch.arange(4.0).unsqueeze(1) * 1e-3
    x[4] = 3e38
    x[0] = -3e38
    assert suspected_rows(x) == [0, 4]


def test_the_median_of_float64_rows_near_the_largest_value_is_finite():
    # The two middle values' float64 sum overflows: their midpoint is taken as
    # halves (as the coordinate-wise Median takes it), not as inf, so the rows
    # at the median are at distance 0 from it.
    top = np.finfo(np.float64).max
    rows = np.array([[top], [top], [0.0], [0.0], [top], [top]])
    distances = median_distances(torch.from_numpy(rows))
    assert distances[[0, 1, 4, 5]].tolist() == [0.0] * 4
