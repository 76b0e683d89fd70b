"""The app as library calls: the server's run, its roster and episodes, and the
client's handlers, called directly (no ServerApp, no ClientApp around them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from message_helpers import delivered, node_context
from resume_helpers import InProcessGrid
from strategy_helpers import server_identity

from flwr_byz.app import client_run
from flwr_byz.app.checkpoint import CHECKPOINT_FILE, load_checkpoint
from flwr_byz.app.config import check_run_config
from flwr_byz.app.episodes import start_position
from flwr_byz.app.results import RunInterruptedError
from flwr_byz.app.roster import Roster
from flwr_byz.app.server_run import open_run_dir, run_server
from flwr_byz.models import build_model

SMALL = {
    "strategy": "fedavg",
    "num-server-rounds": 2,
    "samples-per-region": 20,
    "byzantine-fraction": 0.5,
    "attack": "sign-flip",
    "seed": 1,
    "device": "cpu",
}
NODES = {101: 0, 202: 1, 303: 2, 404: 3}


@pytest.fixture(autouse=True)
def _fresh_client_cache():
    client_run.clear_caches()
    yield
    client_run.clear_caches()


def _cfg(tmp_path: Path, **overrides) -> dict:
    return check_run_config({**SMALL, "output-dir": str(tmp_path / "run"), **overrides})


def test_run_server_plays_the_rounds_on_a_grid_it_is_given(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    grid = InProcessGrid(NODES, cfg)
    with server_identity():
        results = run_server(grid, cfg)
    assert results["status"] == "completed"
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    truth = results["ground-truth"]
    assert truth["node-partitions"] == {str(n): p for n, p in NODES.items()}
    assert len(truth["byzantine-node-ids"]) == 2
    # The checkpoint of its last round, written at the end of that round.
    payload = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert (payload["episode"], payload["round"]) == (1, 2)
    assert payload["strategy"]["class"].endswith("FedAvg")


def test_fault_injection_stops_after_the_checkpoint_of_that_round(tmp_path) -> None:
    cfg = _cfg(tmp_path, **{"fault-stop-after-round": 1})
    grid = InProcessGrid(NODES, cfg)
    with server_identity(), pytest.raises(RunInterruptedError, match="round 1"):
        run_server(grid, cfg)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["round"] == 1


def test_open_run_dir_refuses_a_used_directory_before_writing(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    run_dir, resume = open_run_dir(cfg, run_id=7)
    assert resume is None and run_dir == (tmp_path / "run").resolve()
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"status": "completed"}')
    with pytest.raises(ValueError, match="another run"):
        open_run_dir(cfg, run_id=7)


def test_roster_ground_truth_and_nodes_that_join_later(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    grid = InProcessGrid(NODES, cfg)
    with server_identity():
        roster = Roster.discover(grid, cfg)
    assert roster.identities == NODES
    truth = roster.ground_truth()
    byzantine = truth["byzantine-node-ids"]
    assert len(byzantine) == 2
    assert {NODES[n] for n in byzantine} == set(truth["byzantine-partition-ids"])
    # A SuperNode that restarts gets a new node id for its partition.
    partition = NODES[byzantine[0]]
    grid.partitions[909] = partition
    grid._node_ids.append(909)
    grid.contexts[909] = node_context(
        {"partition-id": partition, "num-partitions": 4}, dict(cfg), node_id=909
    )
    with server_identity():
        joined = roster.identify_joined(grid)
    assert joined == [(909, partition, True)]  # a Byzantine partition
    assert roster.identities[909] == partition


def test_start_position_after_a_checkpoint() -> None:
    class At:
        def __init__(self, episode: int, rnd: int) -> None:
            self.episode, self.round = episode, rnd

    assert start_position(None, 5) == (1, 0)
    assert start_position(At(1, 2), 5) == (1, 2)
    assert start_position(At(1, 5), 5) == (2, 0)  # that episode was complete


def _message(kind: str, content: RecordDict) -> Message:
    return delivered(content, kind, src_node_id=1, message_id="m")


def test_client_handlers_are_plain_calls() -> None:
    cfg = check_run_config({**SMALL, "attack": "none"})
    ctx = node_context({"partition-id": 1, "num-partitions": 4}, cfg)
    identity = client_run.query(_message(MessageType.QUERY, RecordDict()), ctx)
    assert dict(identity.content["identity"]) == {
        "partition-id": 1,
        "num-partitions": 4,
    }
    model = build_model("auto", 1024, 2, seed=0)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "config": ConfigRecord({"server-round": 3, "num-classes": 2}),
        }
    )
    trained = client_run.train(_message(MessageType.TRAIN, content), ctx)
    again = client_run.train(_message(MessageType.TRAIN, content), ctx)
    first = trained.content["arrays"].to_torch_state_dict()
    # The batches are a pure function of (seed, partition, round).
    for key, value in again.content["arrays"].to_torch_state_dict().items():
        assert torch.equal(value, first[key])
    assert not torch.equal(first["0.weight"], model.state_dict()["0.weight"])
    evaluated = client_run.evaluate(_message(MessageType.EVALUATE, content), ctx)
    assert 0.0 <= evaluated.content["metrics"]["eval-acc"] <= 1.0
