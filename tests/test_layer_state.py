"""Each strategy layer saves and loads its own state (``state_dict`` /
``load_state_dict``): a strategy that played a round, saved, and loaded into a fresh
one plays the next round bit for bit as the original does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedAvg
from strategy_helpers import (
    Linear43,
    instructions,
    model_arrays,
    reply,
    server_identity,
    shifted,
)

from flwr_byz.app.checkpoint import (
    CHECKPOINT_FILE,
    capture_strategy,
    load_checkpoint,
    restore_strategy,
    save_checkpoint,
)
from flwr_byz.app.observed_strategy import ObservedStrategy
from flwr_byz.attacks import ServerSideAttack
from flwr_byz.strategy import GAA, Mean, Median
from flwr_byz.strategy.layer_state import (
    StateMismatchError,
    load_tagged_state,
    tagged_state,
)
from flwr_byz.strategy.legacy import LegacyRobust

NODES = (1, 2, 3, 4)
MOVED = {1: 11, 2: 12, 3: 13, 4: 14}  # a resumed federation's new node ids


@pytest.fixture(autouse=True)
def _identity():
    with server_identity():
        yield


def _step(node: int, server_round: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * server_round + node % 10)
    return rng.normal(scale=0.1, size=15).astype(np.float32)


def play(strategy: Any, theta: dict, server_round: int, nodes=NODES):
    """One training round: configure, every node replies its own step, aggregate."""
    msgs = sorted(
        instructions(strategy, server_round, theta, nodes),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [
        reply(
            m,
            shifted(theta, _step(m.metadata.dst_node_id, server_round)),
            {"num-examples": 10},
        )
        for m in msgs
    ]
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return {k: arrays[k].numpy().copy() for k in theta}, metrics


def _momentum_mean() -> Mean:
    return Mean(server_momentum=0.9, device="cpu")


def _gaa() -> GAA:
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    return GAA(model_factory=Linear43, qv_set=(x, x[:, :3].argmax(1)), device="cpu")


def _attacked(inner: Any) -> ServerSideAttack:
    return ServerSideAttack(inner, "sign-flip", byzantine_node_ids=[2], seed=1)


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "make",
    [
        _momentum_mean,
        _gaa,
        lambda: _attacked(_momentum_mean()),
        lambda: ObservedStrategy(
            _attacked(_momentum_mean()), on_train=lambda *args: None
        ),
    ],
    ids=["momentum", "gaa", "attack", "observed"],
)
def test_a_loaded_state_plays_the_next_round_bit_for_bit(make) -> None:
    theta0 = model_arrays(0)
    whole = make()
    theta1, _ = play(whole, theta0, 1)
    theta2, metrics2 = play(whole, theta1, 2)

    first = make()
    assert _same(play(first, theta0, 1)[0], theta1)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    again, metrics = play(resumed, theta1, 2)
    assert _same(again, theta2)
    assert dict(metrics) == dict(metrics2)
    # Without the state, round 2 comes out otherwise: the state is what carries.
    fresh, _ = play(make(), theta1, 2)
    assert not _same(fresh, theta2)


def test_the_state_is_plain_data_through_a_checkpoint_file(tmp_path) -> None:
    """Saved with torch.save, read with weights_only=True, node ids mapped."""
    theta0 = model_arrays(0)
    whole = _attacked(_gaa())
    theta1, _ = play(whole, theta0, 1)
    theta2, metrics2 = play(whole, theta1, 2)

    first = _attacked(_gaa())
    play(first, theta0, 1)
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, {"strategy": capture_strategy(first)})
    saved = torch.load(path, weights_only=True)["strategy"]
    resumed = ServerSideAttack(
        _gaa(),
        "sign-flip",
        byzantine_node_ids=[MOVED[2]],
        seed=1,
        node_keys={new: old for old, new in MOVED.items()},
    )
    restore_strategy(resumed, saved, MOVED, tmp_path)
    assert resumed.tampered == {1: [MOVED[2]]}
    assert set(resumed.credits()) == {MOVED[i] for i in first.credits()}
    again, metrics = play(resumed, theta1, 2, nodes=tuple(MOVED.values()))
    assert _same(again, theta2)
    assert metrics["weights"] == metrics2["weights"]
    assert metrics["credits"] == metrics2["credits"]


def test_state_keys_per_layer() -> None:
    inner = _momentum_mean()
    layered = ObservedStrategy(_attacked(inner), on_train=lambda *a: None)
    state = layered.state_dict()
    assert set(state) == {"strategy"}
    attack = state["strategy"]
    assert attack["class"].endswith("ServerSideAttack")
    assert set(attack["state"]) == {"tampered", "strategy"}
    assert attack["state"]["strategy"]["class"].endswith(".Mean")
    assert attack["state"]["strategy"]["state"] == {"momentum": None}
    assert set(_gaa().state_dict()) == {"momentum", "agent"}
    legacy = LegacyRobust(_momentum_mean())
    assert legacy.state_dict()["strategy"]["class"].endswith(".Mean")


def test_legacy_adapter_state_is_its_strategys() -> None:
    inner = _momentum_mean()
    play(inner, model_arrays(0), 1)
    legacy = LegacyRobust(inner)
    other = LegacyRobust(_momentum_mean())
    other.load_state_dict(legacy.state_dict())
    assert np.array_equal(
        other.strategy.state_dict()["momentum"], inner.state_dict()["momentum"]
    )


def test_flowers_fedavg_carries_nothing_and_another_class_is_refused() -> None:
    assert tagged_state(FedAvg()) == {
        "class": f"{FedAvg.__module__}.FedAvg",
        "state": {},
    }
    attack = _attacked(FedAvg())
    attack.tampered = {3: [2]}
    again = _attacked(FedAvg())
    again.load_state_dict(attack.state_dict())
    assert again.tampered == {3: [2]}
    with pytest.raises(StateMismatchError, match="Median"):
        load_tagged_state(Median(device="cpu"), tagged_state(_momentum_mean()))
    with pytest.raises(StateMismatchError, match="FedAvg"):
        _attacked(FedAvg()).load_state_dict(_attacked(_momentum_mean()).state_dict())
    with pytest.raises(StateMismatchError, match="momentum"):
        load_tagged_state(
            FedAvg(),
            {"class": tagged_state(FedAvg())["class"], "state": {"momentum": None}},
        )


def test_checkpoint_reads_the_version_1_layer_list(tmp_path) -> None:
    """Version 1 stored one entry per layer, outermost first."""
    inner = _momentum_mean()
    play(inner, model_arrays(0), 1)
    momentum = inner.state_dict()["momentum"]
    attack_class = tagged_state(_attacked(inner))["class"]
    payload = {
        "format": "flwr-byz-checkpoint",
        "version": 1,
        "config": {},
        "episode": 1,
        "round": 1,
        "arrays": {},
        "strategy": [
            {"class": attack_class, "tampered": {1: [2]}},
            {"class": tagged_state(inner)["class"], "momentum": momentum},
        ],
        "rng": {},
        "nodes": {},
        "results": {},
        "log": {},
        "elapsed-s": 0.0,
    }
    save_checkpoint(tmp_path / CHECKPOINT_FILE, payload)
    loaded = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    resumed = _attacked(_momentum_mean())
    restore_strategy(resumed, loaded["strategy"], {2: 7}, tmp_path)
    assert resumed.tampered == {1: [7]}
    assert torch.equal(resumed.state_dict()["strategy"]["state"]["momentum"], momentum)
