"""Liveness of the app: the real ServerApp ``run`` and ClientApp on Flower's
InMemoryGrid/LinkState (tests/link_federation.py), in one process (fast)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from link_federation import Behaviour, LinkFederation, dies_in_round, silent

from clients.client_app import app as client_app
from flwr_byz.app.client_run import fault_delay
from flwr_byz.app.config import RunConfigError, check_run_config
from flwr_byz.app.federation import (
    MAX_ERROR_REPLIES,
    IdentityQueries,
    NodeIdentity,
    discover_nodes,
    identify_nodes,
)
from flwr_byz.app.liveness import node_floor, sampling_settings
from flwr_byz.app.results import RunInterruptedError
from flwr_byz.app.server_run import run_server
from flwr_byz.strategy.sampling import NotEnoughNodesError

RUN = {
    "num-server-rounds": 3,
    "strategy": "faba",
    "attack": "scaling",
    "byzantine-fraction": 0.25,
    "assumed-byzantine-fraction": 0.25,
    "seed": 0,
    "round-timeout": 30.0,
    "node-wait-timeout": 5.0,
    "device": "cpu",
}


def app_federation(cfg: dict, node_configs: list[dict]) -> LinkFederation:
    """Nodes that run this repository's ClientApp with their own node config."""
    fed = LinkFederation(len(node_configs), silent)
    contexts: dict[int, Context] = {}

    def client(ins: Message) -> Message:
        nid = ins.metadata.dst_node_id
        if nid not in contexts:
            contexts[nid] = Context(
                run_id=fed.run.run_id,
                node_id=nid,
                node_config=node_configs[fed.node_ids.index(nid)],
                state=RecordDict(),
                run_config=dict(cfg),
            )
        return client_app(ins, contexts[nid])

    fed.behaviour = client
    return fed


def partitions(n: int) -> list[dict]:
    return [{"partition-id": i, "num-partitions": n} for i in range(n)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["faba", "fedavg"])
def test_a_node_that_dies_after_round_1_is_recorded_missing_and_the_run_ends(
    strategy: str, tmp_path: Path
) -> None:
    cfg = check_run_config({**RUN, "strategy": strategy, "output-dir": str(tmp_path)})
    fed = app_federation(cfg, partitions(4))
    victim = fed.node_ids[2]
    fed.behaviours[victim] = dies_in_round(fed, victim, 2, fed.behaviour)
    with fed:
        results = run_server(fed.grid, cfg)
    assert results == json.loads((tmp_path / "results.json").read_text())
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert results["summary"]["final-accuracy"] is not None
    gone = {"node-id": victim, "partition-id": 2, "reason": "node-unavailable"}
    assert [r["missing"] for r in rounds[1:]] == [[], [gone], []]
    for entry in rounds[1:]:
        assert not entry["rejected"], entry  # never "unexpected-node from node 1"
        assert SUPERLINK_NODE_ID not in entry["node-ids"]
    assert fed.received[victim].count("train") == 2  # not sampled in round 3
    if strategy == "faba":
        assert len(rounds[3]["node-ids"]) == 3 and victim not in rounds[3]["node-ids"]


@pytest.mark.timeout(120)
def test_too_few_nodes_stop_the_run_with_a_message_in_results_json(
    tmp_path: Path,
) -> None:
    cfg = check_run_config(
        {
            **RUN,
            "min-available-nodes": 4,
            "node-wait-timeout": 1.0,
            "output-dir": str(tmp_path),
        }
    )
    fed = app_federation(cfg, partitions(4))
    victim = fed.node_ids[0]
    fed.behaviours[victim] = dies_in_round(fed, victim, 2, fed.behaviour)
    started = time.monotonic()
    with fed, pytest.raises(NotEnoughNodesError, match="only 3 node"):
        run_server(fed.grid, cfg)
    assert time.monotonic() - started < 60
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    stopped = results["summary"]["stopped"]
    assert stopped.startswith("after round 2: only 3 node(s) connected"), stopped


@pytest.mark.timeout(120)
def test_a_node_sleeping_past_round_timeout_does_not_hold_the_round(
    tmp_path: Path,
) -> None:
    # The ClientApp's fault-injection knob: node 1 answers each train message 3 s
    # late; the rounds wait 1 s.
    cfg = check_run_config(
        {
            **RUN,
            "num-server-rounds": 2,
            "round-timeout": 1.0,
            "output-dir": str(tmp_path),
        }
    )
    configs = partitions(4)
    configs[1]["sleep-seconds"] = 3.0
    fed = app_federation(cfg, configs)
    sleeper = fed.node_ids[1]
    with fed:
        results = run_server(fed.grid, cfg)
    late = {"node-id": sleeper, "partition-id": 1, "reason": "timed-out"}
    for entry in results["rounds"][1:]:
        assert entry["missing"] == [late]
        # The round ended at its timeout: the sleeper's reply (3 s) never came
        # in, so it is missing above; no upper time bound (a loaded machine).
        assert entry["train-time-s"] >= 1.0, entry["train-time-s"]
        assert len(entry["node-ids"]) == 3 and not entry["rejected"]
    assert results["summary"]["final-accuracy"] is not None


def _identity(record: dict) -> Behaviour:
    def answer(ins: Message) -> Message:
        return Message(RecordDict({"identity": ConfigRecord(record)}), reply_to=ins)

    return answer


@pytest.mark.timeout(60)
def test_start_up_identities_bad_silent_or_dead_nodes_never_stop_the_run() -> None:
    with LinkFederation(5, _identity({"partition-id": 0, "num-partitions": 5})) as fed:
        good, malformed, failing, quiet, dead = fed.node_ids
        fed.behaviours[malformed] = _identity({"partition-id": "three"})
        fed.behaviours[failing] = lambda ins: Message(
            Error(code=2, reason="ClientApp raised"), reply_to=ins
        )
        fed.behaviours[quiet] = silent

        def dies(ins: Message) -> None:
            fed.kill(dead)

        fed.behaviours[dead] = dies
        found = discover_nodes(
            fed.grid, min_nodes=2, timeout=10, settle=0.5, query_timeout=1.0
        )
    assert found == {
        good: NodeIdentity(0, 5),
        malformed: NodeIdentity(),  # its reply is excluded, the node is not
        failing: NodeIdentity(),
        quiet: NodeIdentity(),  # no answer within the query timeout
    }  # the dead node is left out; no phantom node 1 from the SuperLink's notice
    for nid in (good, malformed, failing, quiet, dead):  # one query each
        assert fed.received[nid].count("query") == 1, (nid, fed.received[nid])


@pytest.mark.parametrize(
    ("overrides", "floor", "min_train"),
    [
        ({}, 3, 3),  # FABA, f = floor(0.25 · 4) = 1: 2f + 1
        ({"strategy": "fedavg"}, 2, 2),
        ({"strategy": "gaa"}, 2, 2),
        ({"min-available-nodes": 4}, 4, 4),
        ({"min-available-nodes": 1}, 1, 1),
        ({"fraction-train": 0.5}, 2, 2),  # f = floor(0.25 · 2) = 0: 1, at least 2
    ],
)
def test_min_available_nodes_defaults_to_what_the_rule_needs(
    overrides: dict, floor: int, min_train: int
) -> None:
    cfg = check_run_config({**RUN, **overrides})
    assert node_floor(cfg, 4) == floor
    assert sampling_settings(cfg, 4) == {
        "min_available_nodes": floor,
        "min_train_nodes": min_train,
        "min_evaluate_nodes": min(2, floor),
    }


def test_liveness_keys_are_validated() -> None:
    for key, value in (
        ("round-timeout", 0),
        ("round-timeout", -5.0),
        ("round-timeout", "soon"),
        ("node-wait-timeout", 0.0),
        ("min-available-nodes", -1),
        ("min-available-nodes", 2.5),
    ):
        with pytest.raises(RunConfigError, match=f"'{key}'"):
            check_run_config({key: value})
    with pytest.raises(RunConfigError, match="'min-available-nodes' = 5 but only 4"):
        node_floor(check_run_config({"min-available-nodes": 5}), 4)
    cfg = check_run_config({})
    assert (cfg["round-timeout"], cfg["node-wait-timeout"]) == (600.0, 300.0)
    assert cfg["min-available-nodes"] == 0


def test_the_sleep_knob_is_validated() -> None:
    assert fault_delay({}) == 0.0
    assert fault_delay({"sleep-seconds": 2}) == 2.0
    for bad in (-1, "long", float("inf"), True):
        with pytest.raises(ValueError, match="sleep-seconds"):
            fault_delay({"sleep-seconds": bad})


@pytest.mark.timeout(120)
def test_a_restarted_node_keeps_its_partition_and_role_in_the_record(
    tmp_path: Path,
) -> None:
    """Partition 2's node dies in round 2 and comes back under a new node id (a
    restarted SuperNode): the record keeps its partition and, since partition 2
    is Byzantine here, counts the new id as Byzantine too."""
    cfg = check_run_config(
        {
            **RUN,
            "strategy": "faba",
            "attack": "sign-flip",
            "byzantine-partitions": "2",
            "output-dir": str(tmp_path),
        }
    )
    configs = partitions(4)
    fed = app_federation(cfg, configs)
    victim = fed.node_ids[2]
    restarted: list[int] = []

    def dies_and_restarts(ins: Message) -> Message | None:
        if ins.metadata.message_type == "train" and _server_round(ins) >= 2:
            fed.kill(victim)
            configs.append(dict(configs[2]))  # the same node config, a new node id
            restarted.append(fed.join())
            return None
        return fed.behaviour(ins)

    fed.behaviours[victim] = dies_and_restarts
    with fed:
        results = run_server(fed.grid, cfg)
    assert len(restarted) == 1
    new = restarted[0]
    truth = results["ground-truth"]
    assert truth["node-partitions"][str(new)] == 2
    assert sorted(truth["byzantine-node-ids"]) == sorted([victim, new])
    assert truth["byzantine-partition-ids"] == [2]
    last = results["rounds"][-1]
    assert new in last["node-ids"]
    assert last["partitions"][last["node-ids"].index(new)] == 2
    assert -1 not in last["partitions"]


def _server_round(ins: Message) -> int:
    return int(next(iter(ins.content.config_records.values()))["server-round"])


def _first_query(fed: LinkFederation, nid: int, first: Behaviour) -> Behaviour:
    """``first`` answers the node's first identity query; ``fed.behaviour`` the rest."""

    def behaviour(ins: Message) -> Message | None:
        if (
            ins.metadata.message_type == "query"
            and fed.received[nid].count("query") == 1
        ):
            return first(ins)
        return fed.behaviour(ins)

    return behaviour


@pytest.mark.timeout(120)
def test_nodes_that_miss_the_identity_query_get_their_partition_in_the_record(
    tmp_path: Path,
) -> None:
    """Three nodes miss the start-up identity query (1 s here): one answers it 2 s
    late, one answers it with an error, one never answers it. Each is asked again
    before the next round and ends up with its partition, Byzantine role
    included, in the ground truth, the round record and the detection scores."""
    cfg = check_run_config(
        {
            **RUN,
            "num-server-rounds": 2,
            "strategy": "faba",
            "attack": "sign-flip",
            "byzantine-partitions": "1,2",
            "node-wait-timeout": 1.0,  # the identity query waits min(60 s, this)
            "output-dir": str(tmp_path),
        }
    )
    fed = app_federation(cfg, partitions(4))
    _, late, failing, quiet = fed.node_ids

    def answers_late(ins: Message) -> Message | None:
        time.sleep(2.0)
        return fed.behaviour(ins)

    fed.behaviours[late] = _first_query(fed, late, answers_late)
    fed.behaviours[failing] = _first_query(
        fed, failing, lambda ins: Message(Error(code=2, reason="busy"), reply_to=ins)
    )
    fed.behaviours[quiet] = _first_query(fed, quiet, silent)
    with fed:
        results = run_server(fed.grid, cfg)
    truth = results["ground-truth"]
    assert truth["node-partitions"] == {str(n): p for p, n in enumerate(fed.node_ids)}
    assert truth["byzantine-node-ids"] == sorted([late, failing])
    assert truth["byzantine-partition-ids"] == [1, 2]
    assert sorted(results["rounds"][-1]["partitions"]) == [0, 1, 2, 3]
    assert results["summary"]["byzantine-partitions"] == [1, 2]
    # Asked once at start-up and once more; answered nodes are not asked again.
    assert fed.received[quiet].count("query") == 2
    assert fed.received[fed.node_ids[0]].count("query") == 1


@pytest.mark.timeout(60)
def test_an_unanswered_node_is_asked_before_every_round_until_it_answers() -> None:
    with LinkFederation(3, _identity({"partition-id": 0, "num-partitions": 3})) as fed:
        good, quiet, failing = fed.node_ids
        fed.behaviours[quiet] = silent
        fed.behaviours[failing] = lambda ins: Message(
            Error(code=2, reason="ClientApp raised"), reply_to=ins
        )
        queries = IdentityQueries()
        found = discover_nodes(
            fed.grid,
            min_nodes=2,
            timeout=10,
            settle=0.2,
            query_timeout=0.3,
            queries=queries,
        )
        assert found == {
            good: NodeIdentity(0, 3),
            quiet: NodeIdentity(),
            failing: NodeIdentity(),
        }
        for _ in range(MAX_ERROR_REPLIES + 1):  # one call before each round
            assert identify_nodes(fed.grid, found, queries, timeout=0.3) == {}
        # The quiet node is asked before every round; the failing one until it
        # has answered MAX_ERROR_REPLIES queries with an error.
        assert fed.received[quiet].count("query") == MAX_ERROR_REPLIES + 2
        assert fed.received[failing].count("query") == MAX_ERROR_REPLIES
        assert fed.received[good].count("query") == 1
        # It answers at last (a late reply to any of its queries counts).
        fed.behaviours[quiet] = _identity({"partition-id": 2})
        assert identify_nodes(fed.grid, found, queries, timeout=5) == {
            quiet: NodeIdentity(2)
        }
        assert identify_nodes(fed.grid, found, queries, timeout=5) == {}


@pytest.mark.timeout(60)
def test_a_late_answer_to_the_first_query_is_collected_without_asking_again() -> None:
    with LinkFederation(2, _identity({"partition-id": 0, "num-partitions": 2})) as fed:
        good, slow = fed.node_ids
        answer = _identity({"partition-id": 1, "num-partitions": 2})

        def slow_answer(ins: Message) -> Message:
            time.sleep(1.0)
            return answer(ins)

        fed.behaviours[slow] = slow_answer
        queries = IdentityQueries()
        found = discover_nodes(
            fed.grid,
            min_nodes=2,
            timeout=10,
            settle=0.2,
            query_timeout=0.2,
            queries=queries,
        )
        assert found == {good: NodeIdentity(0, 2), slow: NodeIdentity()}
        deadline = time.monotonic() + 10
        late: dict[int, NodeIdentity] = {}
        while not late and time.monotonic() < deadline:
            time.sleep(0.2)
            late = identify_nodes(fed.grid, found, queries, timeout=0, ask=False)
        assert late == {slow: NodeIdentity(1, 2)}
        assert fed.received[slow].count("query") == 1


@pytest.mark.timeout(120)
def test_a_resumed_run_asks_again_a_node_that_missed_the_identity_query(
    tmp_path: Path,
) -> None:
    """A resumed run matches the checkpoint's nodes by partition: a node of the
    new federation that misses the first identity query is asked again, so the
    run resumes instead of refusing an unmatched node."""
    cut = tmp_path / "cut"
    settings = {
        **RUN,
        "num-server-rounds": 2,
        "node-wait-timeout": 1.0,
        "fault-stop-after-round": 1,
    }
    cfg = check_run_config({**settings, "output-dir": str(cut)})
    with app_federation(cfg, partitions(4)) as fed, pytest.raises(RunInterruptedError):
        run_server(fed.grid, cfg)
    assert json.loads((cut / "results.json").read_text())["status"] == "interrupted"

    cfg = check_run_config(
        {**settings, "fault-stop-after-round": 0, "resume": str(cut)}
    )
    back = app_federation(cfg, partitions(4))
    quiet = back.node_ids[3]
    back.behaviours[quiet] = _first_query(back, quiet, silent)
    with back:
        results = run_server(back.grid, cfg)
    assert results["status"] == "completed"
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    assert results["ground-truth"]["node-partitions"][str(quiet)] == 3
    assert back.received[quiet].count("query") == 2
