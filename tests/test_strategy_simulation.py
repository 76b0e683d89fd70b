"""End to end in Flower's simulation engine (Ray backend, 7 supernodes).

One simulation runs every strategy in turn (one ``strategy.start`` each) so the
Ray start-up is paid once: 5 honest clients send θ + their fixed step, 2 send
θ + 100; then malformed replies of several kinds go through a whole start().
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from simulation_helpers import client_app, simulate, start, train_reply

from flwr_byz import strategy as strategies

# One worker runs this module under pytest-xdist: its module fixture is costly.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_strategy_simulation")]

NUM_NODES = 7
BYZANTINE = (5, 6)  # partition ids
D = 40


def honest_step(partition: int) -> np.ndarray:
    """The fixed update of an honest partition."""
    j = np.arange(D)
    return (0.1 * (partition + 1) + 0.01 * ((partition * j) % 7)).astype(np.float32)


HONEST_MEAN = np.mean(
    [honest_step(p) for p in range(NUM_NODES) if p not in BYZANTINE], axis=0
)
THETA0 = {
    "w": np.linspace(-1, 1, D - 8, dtype=np.float32).reshape(4, 8),
    "b": np.zeros(8, dtype=np.float32),
    "steps": np.array(0, dtype=np.int64),
}

client = client_app()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    mode = str(msg.content["config"].get("mode", "shift"))
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    w, b, steps = (np.array(a) for a in arrays)
    flat = np.concatenate([w.ravel(), b])
    if pid in BYZANTINE and mode == "shift":
        flat = flat + np.float32(100.0)
    else:
        flat = flat + honest_step(pid)
    out = {"w": flat[: w.size].reshape(w.shape), "b": flat[w.size :], "steps": steps}
    if mode == "malformed":
        if pid == 3:
            raise RuntimeError("client crashed")  # becomes an error reply
        if pid == 4:
            out["w"] = out["w"].reshape(8, 4)
        if pid == 5:
            out["b"] = out["b"].copy()
            out["b"][2] = np.nan
        if pid == 6:
            out["extra"] = np.ones(3, dtype=np.float32)
    record = ArrayRecord({k: _array(v) for k, v in out.items()})
    return train_reply(msg, record, {"num-examples": 10, "train-loss": float(pid)})


def _array(value: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(value))


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record["w"].numpy().ravel(), record["b"].numpy()])


CASES = {
    "fedavg": lambda: FedAvg(fraction_evaluate=0.0),
    "faba": lambda: strategies.FABA(num_malicious_nodes=2, fraction_evaluate=0.0),
    "krum": lambda: strategies.Krum(num_malicious_nodes=2, fraction_evaluate=0.0),
    "multikrum": lambda: strategies.MultiKrum(
        num_malicious_nodes=2, fraction_evaluate=0.0
    ),
    "bulyan": lambda: strategies.Bulyan(num_malicious_nodes=1, fraction_evaluate=0.0),
    "geomed": lambda: strategies.GeoMed(num_malicious_nodes=2, fraction_evaluate=0.0),
    "median": lambda: strategies.Median(fraction_evaluate=0.0),
    "trimmed-mean": lambda: strategies.TrimmedMean(beta=0.3, fraction_evaluate=0.0),
    "brute-force": lambda: strategies.BruteForce(
        num_malicious_nodes=2, fraction_evaluate=0.0
    ),
}


@pytest.fixture(scope="module")
def simulation() -> dict:
    """Run everything in one simulation; returns what the ServerApp saw."""

    def run_all(grid: Grid, seen: dict) -> None:
        initial = ArrayRecord({k: _array(v) for k, v in THETA0.items()})
        for name, make in CASES.items():
            seen[name] = start(make(), grid, initial, 1, {"mode": "shift"})
        strategy = strategies.Median(fraction_evaluate=0.0)
        seen["malformed"] = start(strategy, grid, initial, 2, {"mode": "malformed"})
        seen["malformed-history"] = strategy.history
        sampled = strategies.FABA(
            num_malicious_nodes=1,
            fraction_train=0.5,
            min_train_nodes=3,
            fraction_evaluate=0.0,
        )
        seen["sampled"] = start(sampled, grid, initial, 1, {"mode": "honest"})
        # Krum with f = 3 needs 9 nodes.
        bound = strategies.Krum(num_malicious_nodes=3, fraction_evaluate=0.0)
        seen["bound"] = start(bound, grid, initial, 1, {"mode": "shift"})

    return simulate(client, NUM_NODES, run_all)


def test_fedavg_is_poisoned(simulation):
    moved = _flat(simulation["fedavg"].arrays) - _flat_theta0()
    assert moved.min() > 20


def _flat_theta0() -> np.ndarray:
    return np.concatenate([THETA0["w"].ravel(), THETA0["b"]])


@pytest.mark.parametrize("name", [n for n in CASES if n != "fedavg"])
def test_robust_strategy_stays_near_honest_mean(simulation, name):
    moved = _flat(simulation[name].arrays) - _flat_theta0()
    tolerance = 1e-5 if name in ("faba", "multikrum", "brute-force") else 0.35
    np.testing.assert_allclose(moved, HONEST_MEAN, atol=tolerance)
    metrics = simulation[name].train_metrics_clientapp[1]
    assert metrics["num-valid"] == NUM_NODES and metrics["num-rejected"] == 0
    if name in ("faba", "multikrum", "brute-force"):
        partition = simulation["partition"]
        assert sorted(partition[n] for n in metrics["removed-node-ids"]) == [5, 6]


def test_malformed_replies_through_a_whole_start(simulation):
    result = simulation["malformed"]
    partition = simulation["partition"]
    final = _flat(result.arrays)
    assert np.isfinite(final).all()
    honest = [honest_step(p) for p in (0, 1, 2)]
    expected = _flat_theta0() + 2 * np.median(honest, axis=0)
    np.testing.assert_allclose(final, expected, atol=1e-5)
    expected_reasons = {
        3: strategies.RejectReason.ERROR_REPLY,
        4: strategies.RejectReason.WRONG_SHAPE,
        5: strategies.RejectReason.NON_FINITE,
        6: strategies.RejectReason.EXTRA_KEYS,
    }
    for rnd in (1, 2):
        metrics = result.train_metrics_clientapp[rnd]
        got = {
            partition[n]: strategies.RejectReason(c)
            for n, c in zip(
                metrics["rejected-node-ids"], metrics["rejected-reasons"], strict=True
            )
        }
        assert got == expected_reasons
        assert metrics["num-valid"] == 3
    history = simulation["malformed-history"]
    assert {partition[n]: r for n, r in history[-1].rejected} == {
        p: r.name for p, r in expected_reasons.items()
    }


def test_fraction_train_samples_nodes(simulation):
    metrics = simulation["sampled"].train_metrics_clientapp[1]
    assert metrics["num-sent"] == 3 and metrics["num-valid"] == 3


def test_bound_failure_keeps_initial_weights(simulation):
    result = simulation["bound"]
    np.testing.assert_array_equal(_flat(result.arrays), _flat_theta0())
    assert result.train_metrics_clientapp[1]["bound-failed"] == 1
