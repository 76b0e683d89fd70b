"""Liveness: dead, silent and slow nodes never stall a run or get misreported (fast).

Every test talks to Flower's own InMemoryGrid and LinkState (tests/link_federation.py):
a "dead" node is one the LinkState marks offline, so the SuperLink's own notices
(sender node id 1, NODE_UNAVAILABLE) come from Flower's code.
"""

from __future__ import annotations

import random
import time

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg
from link_federation import LinkFederation, dies_in_round, echo, silent
from strategy_helpers import (
    LocalMean,
    StaticGrid,
    model_arrays,
    server_identity,
    to_record,
)

from flwr_byz.app.observed_strategy import ObservedStrategy
from flwr_byz.strategy.reply_validation import attribute_replies
from flwr_byz.strategy.round_report import MissingReason
from flwr_byz.strategy.sampling import NotEnoughNodesError


def _no_superlink_id(metrics) -> None:
    for key in ("node-ids", "rejected-node-ids", "missing-node-ids"):
        assert SUPERLINK_NODE_ID not in list(metrics[key]), (key, metrics)


def _dies_in_round_two(fed: LinkFederation, index: int) -> int:
    """The federation's node ``index`` dies in round 2; returns its id."""
    victim = fed.node_ids[index]
    fed.behaviours[victim] = dies_in_round(fed, victim, 2)
    return victim


def _train_on_three(**timeouts) -> LocalMean:
    """A mean that trains on three nodes each round and does not evaluate."""
    return LocalMean(
        num_malicious_nodes=0,
        min_available_nodes=3,
        min_train_nodes=3,
        fraction_evaluate=0.0,
        **timeouts,
    )


@pytest.mark.timeout(60)
def test_a_node_that_dies_is_missing_under_its_own_id_and_not_sampled_again() -> None:
    with LinkFederation(4, echo) as fed:
        victim = _dies_in_round_two(fed, 2)
        strategy = _train_on_three(round_timeout=600.0)
        started = time.monotonic()
        result = strategy.start(fed.grid, to_record(model_arrays(0)), num_rounds=3)
        elapsed = time.monotonic() - started
    second = result.train_metrics_clientapp[2]
    # The SuperLink's notice (sender 1) made the victim missing, with its reason;
    # it is nobody's rejected reply.
    assert list(second["missing-node-ids"]) == [victim]
    assert list(second["missing-reasons"]) == [int(MissingReason.NODE_UNAVAILABLE)]
    assert list(second["rejected-node-ids"]) == []
    assert second["num-valid"] == 3
    _no_superlink_id(second)
    assert strategy.history[1].missing_reasons == ["NODE_UNAVAILABLE"]
    # Round 3 samples the three nodes connected then, and does not wait.
    third = result.train_metrics_clientapp[3]
    assert third["num-sent"] == 3 and victim not in list(third["node-ids"])
    assert list(third["missing-node-ids"]) == []
    assert fed.received[victim] == ["train", "train"]
    # The notice ends round 2, not the 600 s timeout (a margin no load reaches).
    assert elapsed < 300, elapsed


@pytest.mark.timeout(60)
def test_a_silent_node_times_out_and_each_round_ends_on_time() -> None:
    with LinkFederation(3, echo) as fed:
        sleeper = fed.node_ids[0]
        fed.behaviours[sleeper] = silent
        strategy = LocalMean(
            num_malicious_nodes=0,
            fraction_evaluate=1.0,
            min_available_nodes=3,
            round_timeout=1.0,
        )
        started = time.monotonic()
        # No timeout argument: the strategy's round_timeout bounds train and
        # evaluate rounds alike (Flower's default would be 3600 s).
        result = strategy.start(fed.grid, to_record(model_arrays(1)), num_rounds=2)
        elapsed = time.monotonic() - started
    # 2 × (train + evaluate) waited their 1 s each, and no round waited for the
    # silent node beyond that (Flower's default would be 3600 s; the upper bound
    # leaves room for a loaded machine).
    assert 4 * 1.0 <= elapsed < 4 * 1.0 + 40, elapsed
    for rnd in (1, 2):
        metrics = result.train_metrics_clientapp[rnd]
        assert list(metrics["missing-node-ids"]) == [sleeper]
        assert list(metrics["missing-reasons"]) == [int(MissingReason.TIMED_OUT)]
        assert metrics["num-valid"] == 2 and metrics["status"] == 0
        _no_superlink_id(metrics)
        assert rnd in result.evaluate_metrics_clientapp
    assert fed.received[sleeper] == ["train", "evaluate", "train", "evaluate"]


@pytest.mark.timeout(60)
def test_too_few_nodes_end_the_run_with_a_message_instead_of_waiting() -> None:
    with LinkFederation(3, echo) as fed:
        victim = _dies_in_round_two(fed, 1)
        strategy = _train_on_three(node_wait_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(NotEnoughNodesError) as info:
            strategy.start(fed.grid, to_record(model_arrays(2)), num_rounds=5)
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert "only 2 node(s) connected after waiting 1 s" in message
    assert "at least 3" in message and "min-available-nodes" in message
    assert len(strategy.history) == 2  # rounds 1 and 2 ran, round 3 could not
    assert strategy.history[1].missing == [victim]
    assert elapsed < 40, elapsed  # gave up after ~1 s, instead of waiting forever


@pytest.mark.timeout(60)
def test_flowers_fedavg_behind_the_observer_reports_and_gives_up_too() -> None:
    seen: dict[int, dict[int, MissingReason]] = {}
    with LinkFederation(3, echo) as fed:
        victim = fed.node_ids[0]
        fed.behaviours[victim] = dies_in_round(fed, victim, 2)
        observed = ObservedStrategy(
            FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0),
            on_train=lambda rnd, _m, _s, missing, _a: seen.__setitem__(rnd, missing),
            node_wait_timeout=1.0,
        )
        with pytest.raises(NotEnoughNodesError, match="only 2 node"):
            observed.start(
                fed.grid, to_record(model_arrays(3)), num_rounds=5, timeout=30
            )
    assert seen == {1: {}, 2: {victim: MissingReason.NODE_UNAVAILABLE}}


@server_identity()
def test_rounds_sample_what_flowers_fedavg_samples() -> None:
    # Same seed, same nodes: the bounded sampling draws exactly FedAvg's nodes, so
    # seeded runs repeat as before.
    nodes = [17, 4, 99, 23, 8, 61, 5, 42, 77, 30]
    theta = to_record(model_arrays(4))
    for fraction, minimum in ((0.5, 2), (1.0, 2), (0.1, 3)):
        random.seed(11)
        flower = FedAvg(fraction_train=fraction, min_train_nodes=minimum)
        expected = [
            m.metadata.dst_node_id
            for m in flower.configure_train(1, theta, ConfigRecord(), StaticGrid(nodes))
        ]
        random.seed(11)
        ours = LocalMean(fraction_train=fraction, min_train_nodes=minimum)
        got = [
            m.metadata.dst_node_id
            for m in ours.configure_train(1, theta, ConfigRecord(), StaticGrid(nodes))
        ]
        assert got == expected


@server_identity()
def test_a_superlink_notice_is_attributed_through_the_instruction_it_answers() -> None:
    ins = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (5, 6)]
    for i, msg in enumerate(ins):
        msg.metadata.__dict__["_message_id"] = f"id-{i}"
    notice = Message(Error(code=5, reason="Node Unavailable"), reply_to=ins[1])
    notice.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    lost = Message(Error(code=4, reason="Reply expired"), reply_to=ins[0])
    lost.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    own_error = Message(Error(code=2, reason="ClientApp raised"), reply_to=ins[0])
    stray = Message(Error(code=5, reason="?"), reply_to=ins[0])
    stray.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    stray.metadata.__dict__["_reply_to_message_id"] = "not-this-round"
    destinations = {"id-0": 5, "id-1": 6}
    own, absent = attribute_replies(
        [notice, lost, own_error, stray], destinations, [5, 6]
    )
    assert own == [own_error]  # a node's own error stays its (rejected) reply
    assert absent == {
        6: MissingReason.NODE_UNAVAILABLE,
        5: MissingReason.REPLY_UNAVAILABLE,
    }
