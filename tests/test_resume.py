"""Checkpoints and resume: refusals, and a resumed run equal to an uninterrupted one.

The end-to-end checks here run the real ServerApp's run
(``flwr_byz.app.server_run.run_server``) and the real ClientApp in this process
(``InProcessGrid``, a few seconds a run); the same check through a real SuperLink
is in ``test_app.py`` (slow). A resumed run gets other node ids than the run it
continues, as a restarted simulation does.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from resume_helpers import InProcessGrid
from run_comparison import assert_bit_equal, comparable, final_state
from small_runs import GAA_WINDOW_RUN
from strategy_helpers import server_identity

from flwr_byz.app import client_run
from flwr_byz.app.checkpoint import (
    CHECKPOINT_FILE,
    VOLATILE_KEYS,
    CheckpointError,
    Resume,
    capture_rng,
    capture_strategy,
    check_arrays,
    check_config,
    load_checkpoint,
    node_map,
    restore_rng,
    restore_strategy,
    save_checkpoint,
)
from flwr_byz.app.config import RunConfigError, check_run_config
from flwr_byz.app.results import (
    ResultsFile,
    RunDirectoryError,
    RunInterruptedError,
    expand_run_dir,
)
from flwr_byz.app.server_run import run_server

PARTITIONS = (0, 1, 2, 3)
FIRST_IDS = (1101, 2202, 3303, 4404)
OTHER_IDS = (9001, 17, 5555, 42)  # a restarted federation draws other node ids

GAA_RUN = {
    **GAA_WINDOW_RUN,
    # 3 of 4 nodes a round: Flower draws them with Python's `random`, so a resume
    # that did not restore that state would sample other nodes.
    "fraction-train": 0.75,
    "samples-per-region": 30,
    "seed": 3,
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def _fresh_client_cache() -> None:
    client_run.clear_caches()


def _run(
    out: Path, node_ids: tuple[int, ...] = FIRST_IDS, **overrides: Any
) -> tuple[dict[str, Any], InProcessGrid]:
    cfg = check_run_config({**GAA_RUN, "output-dir": str(out), **overrides})
    grid = InProcessGrid(dict(zip(node_ids, PARTITIONS, strict=True)), cfg)
    with server_identity():
        return run_server(grid, cfg), grid


def _interrupted(out: Path, after: int, **overrides: Any) -> InProcessGrid:
    cfg = check_run_config(
        {**GAA_RUN, "output-dir": str(out), "fault-stop-after-round": after} | overrides
    )
    grid = InProcessGrid(dict(zip(FIRST_IDS, PARTITIONS, strict=True)), cfg)
    with server_identity(), pytest.raises(RunInterruptedError, match="fault injection"):
        run_server(grid, cfg)
    return grid


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def _trained(grid: InProcessGrid) -> list[tuple[int, int]]:
    """(server-round, partition) of every train message, in the order sent."""
    return sorted(
        (rnd, grid.partitions[node]) for kind, node, rnd in grid.sent if kind == "train"
    )


# ------------------------------------------------------------- file and refusals
def _payload(**changes: Any) -> dict[str, Any]:
    cfg = check_run_config({**GAA_RUN, "output-dir": "x"})
    payload = {
        "format": "flwr-byz-checkpoint",
        "version": 2,
        "config": cfg,
        "episode": 1,
        "round": 2,
        "arrays": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)},
        "strategy": {"class": "flwr.serverapp.strategy.fedavg.FedAvg", "state": {}},
        "rng": capture_rng(),
        "nodes": {11: 0, 22: 1},
        "results": {"rounds": [], "status": "running"},
        "log": {"removed": [], "seen": [], "credits": {}},
        "elapsed-s": 1.5,
    }
    payload.update(changes)
    return payload


def test_checkpoint_round_trips_and_the_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, _payload())
    loaded = load_checkpoint(path)
    assert loaded["round"] == 2 and loaded["nodes"] == {11: 0, 22: 1}
    assert torch.equal(loaded["arrays"]["w"], torch.arange(6.0).reshape(2, 3))
    assert os.listdir(tmp_path) == [CHECKPOINT_FILE]  # no temporary file left

    # A crash while writing the next one leaves the previous checkpoint whole.
    def crash(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload(round=3))
    monkeypatch.undo()
    assert load_checkpoint(path)["round"] == 2


def test_rng_states_round_trip(tmp_path) -> None:
    save_checkpoint(tmp_path / CHECKPOINT_FILE, _payload())
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)["rng"]
    first = (random.random(), random.sample(range(100), 5), torch.rand(3))
    restore_rng(state)
    again = (random.random(), random.sample(range(100), 5), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "trunc"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "unreadable"),
        (lambda p: p.write_bytes(b""), "unreadable"),
        (lambda p: torch.save({"weights": torch.ones(2)}, p), "not a flwr-byz"),
        (lambda p: torch.save(_payload(version=99), p), "format version 99"),
        (lambda p: torch.save(_payload(arrays=None), p), "'arrays'"),
        (lambda p: torch.save(_payload(strategy=[]), p), "'strategy'"),
        (lambda p: torch.save(_payload(version=1, strategy=[]), p), "'strategy'"),
        (lambda p: torch.save(_payload(version=1, strategy=[3]), p), "'strategy'"),
        # A pickled object other than tensors and containers is never unpickled.
        (lambda p: torch.save(_payload(nodes=Path("evil")), p), "unreadable"),
    ],
)
def test_a_damaged_checkpoint_is_refused_with_what_to_do(tmp_path, damage, message):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, _payload())
    damage(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "fresh run" in str(info.value)
    assert isinstance(info.value, RunConfigError)


def test_another_run_config_is_refused_and_named(tmp_path) -> None:
    saved = check_run_config({**GAA_RUN, "output-dir": "a"})
    here = {**saved, "seed": 4, "gaa-gamma": 0.5}
    with pytest.raises(CheckpointError) as info:
        check_config(saved, here, tmp_path)
    text = str(info.value)
    assert "'seed' = 3 there, 4 here" in text and "'gaa-gamma'" in text
    assert "output-dir" in text  # says which keys may differ
    # Where results go, which run to resume, fault injection: free to differ.
    check_config(
        saved,
        {
            **saved,
            "output-dir": "b",
            "resume": "a",
            "fault-stop-after-round": 9,
        },
        tmp_path,
    )
    assert {"output-dir", "resume", "fault-stop-after-round"} == VOLATILE_KEYS
    with pytest.raises(CheckpointError, match="'gaa-trusted-worker'"):
        check_config(saved, {**saved, "gaa-trusted-worker": 0}, tmp_path)


def test_another_model_is_refused(tmp_path) -> None:
    model = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    check_arrays({"w": torch.ones(2, 3), "b": torch.ones(2)}, model, tmp_path)
    with pytest.raises(CheckpointError, match=r"'w' is \(3, 2\)"):
        check_arrays({"w": torch.ones(3, 2), "b": torch.ones(2)}, model, tmp_path)
    with pytest.raises(CheckpointError, match="float64"):
        check_arrays(
            {"w": torch.ones(2, 3).double(), "b": torch.ones(2)}, model, tmp_path
        )
    with pytest.raises(CheckpointError, match="another model"):
        check_arrays({"v": torch.ones(2, 3), "b": torch.ones(2)}, model, tmp_path)


def test_nodes_are_matched_by_partition_or_refused(tmp_path) -> None:
    assert node_map({1: 0, 2: 1}, {7: 1, 9: 0}, tmp_path) == {1: 9, 2: 7}
    assert node_map({1: -1, 2: -1}, {2: -1, 1: -1}, tmp_path) == {1: 1, 2: 2}
    # Node 2 restarted during the run as node 3: node 3 is the one that is back.
    assert node_map({1: 0, 2: 1, 3: 1}, {7: 0, 8: 1}, tmp_path) == {1: 7, 3: 8}
    # The same ids (a deployment), one of them restarted as node 3 (gone now).
    assert node_map({1: 0, 2: 1, 3: 1}, {1: 0, 2: 1}, tmp_path) == {1: 1, 2: 2}
    with pytest.raises(CheckpointError, match="partitions"):
        node_map({1: 0, 2: 1}, {7: 1, 9: 2}, tmp_path)
    with pytest.raises(CheckpointError, match="cannot be matched"):
        node_map({1: -1, 2: -1}, {7: -1, 9: -1}, tmp_path)  # deployment, new ids
    with pytest.raises(CheckpointError, match="partitions"):
        node_map({1: 0, 2: 1}, {7: 0, 8: 1, 9: 2}, tmp_path)
    with pytest.raises(CheckpointError, match="partitions"):
        node_map({1: 0, 2: 1}, {7: 0, 8: 0}, tmp_path)


def test_strategy_state_of_another_strategy_is_refused(tmp_path) -> None:
    from flwr_byz.strategy import FABA, Median
    from flwr_byz.strategy.round_core import RoundState

    faba = FABA(malicious_fraction=0.25, device="cpu")
    faba.round_state = RoundState(momentum=np.arange(4, dtype=np.float32))
    saved = capture_strategy(faba)
    other = FABA(malicious_fraction=0.25, device="cpu")
    restore_strategy(other, saved, {}, tmp_path)
    assert np.array_equal(other.round_state.momentum, faba.round_state.momentum)
    with pytest.raises(CheckpointError, match="Median"):
        restore_strategy(Median(device="cpu"), saved, {}, tmp_path)


def test_missing_checkpoint_and_completed_run_are_refused(tmp_path) -> None:
    cfg = check_run_config({**GAA_RUN, "resume": str(tmp_path / "nowhere")})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Resume.open(cfg)
    save_checkpoint(tmp_path / CHECKPOINT_FILE, _payload())
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed"}))
    cfg = check_run_config({**GAA_RUN, "output-dir": "x", "resume": str(tmp_path)})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Resume.open(cfg)
    (tmp_path / "results.json").write_text(json.dumps({"status": "interrupted"}))
    resume = Resume.open(cfg)
    assert resume.round == 2 and resume.previous_status == "interrupted"
    # The file itself may be named too.
    cfg["resume"] = str(tmp_path / CHECKPOINT_FILE)
    assert Resume.open(cfg).run_dir == tmp_path


def test_a_run_never_writes_into_another_runs_directory(tmp_path) -> None:
    ResultsFile(tmp_path, {"seed": 0}, {})
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(RunDirectoryError, match="resume = ") as info:
        ResultsFile(tmp_path, {"seed": 1}, {})
    assert "status running" in str(info.value)
    assert (tmp_path / "results.json").read_text() == before
    # `{run}` gives every run a directory of its own.
    assert expand_run_dir(str(tmp_path / "r" / "{run}"), "a") != expand_run_dir(
        str(tmp_path / "r" / "{run}"), "b"
    )
    assert check_run_config({})["output-dir"] == "results/{run}"


def test_the_app_refuses_a_used_directory_before_touching_it(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"status": "interrupted", "rounds": []}')
    with pytest.raises(RunDirectoryError, match="another run"):
        _run(out)
    assert (
        out / "results.json"
    ).read_text() == '{"status": "interrupted", "rounds": []}'


# ------------------------------------------------------------------ end to end
def test_sampled_partitions_and_numbers_do_not_depend_on_the_node_ids(
    tmp_path,
) -> None:
    """fraction-train < 1 draws nodes with the seeded `random`: from a list in
    partition order, so another federation of the same partitions (new ids,
    listed in another order, as a new simulation has them) trains the same
    partitions every round and ends with the same numbers."""
    first, first_grid = _run(tmp_path / "a")
    cfg = check_run_config({**GAA_RUN, "output-dir": str(tmp_path / "b")})
    relisted = InProcessGrid({42: 3, 17: 1, 9001: 0, 5555: 2}, cfg)
    with server_identity():
        second = run_server(relisted, cfg)
    assert len(_trained(first_grid)) == 3 * GAA_RUN["num-server-rounds"]  # 3 of 4
    assert _trained(relisted) == _trained(first_grid)
    assert comparable(second) == comparable(first)


def test_resumed_gaa_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path) -> None:
    whole, whole_grid = _run(tmp_path / "whole")
    assert whole["status"] == "completed"

    cut = tmp_path / "cut"
    first = _interrupted(cut, after=2)
    stopped = _results(cut)
    assert stopped["status"] == "interrupted"
    assert "fault injection" in stopped["error"]
    assert [r["round"] for r in stopped["rounds"]] == [0, 1, 2]
    assert final_state(cut)["payload"]["round"] == 2

    # Resubmitting the same run config does not overwrite it …
    with pytest.raises(RunDirectoryError):
        _run(cut)
    # … resuming it does, with a federation whose node ids are all new.
    resumed, second = _run(tmp_path / "ignored", node_ids=OTHER_IDS, resume=str(cut))
    assert not (tmp_path / "ignored").exists()  # a resume goes on in its own dir
    assert resumed["status"] == "completed"
    on_disk = _results(cut)
    assert on_disk["status"] == "completed" and "error" not in on_disk
    assert [r["round"] for r in on_disk["rounds"]] == [0, 1, 2, 3, 4, 5]
    assert on_disk["resumes"][0]["after-round"] == 2
    assert on_disk["resumes"][0]["previous-status"] == "interrupted"
    # The node ids of the record are the new federation's throughout.
    assert set(on_disk["rounds"][1]["node-ids"]) <= set(OTHER_IDS)

    # The clients saw the rounds, and the nodes sampled, of the uninterrupted run.
    assert _trained(first) + _trained(second) == _trained(whole_grid)
    assert_bit_equal(final_state(tmp_path / "whole"), final_state(cut))
    assert comparable(on_disk) == comparable(_results(tmp_path / "whole"))
    config = {k: v for k, v in on_disk["config"].items() if k not in VOLATILE_KEYS}
    assert config == {
        k: v for k, v in whole["config"].items() if k not in VOLATILE_KEYS
    }


@pytest.mark.parametrize("after", [2, 3])  # inside episode 1; at its end
def test_resume_across_gaa_episodes(tmp_path, after: int) -> None:
    episodes = {"gaa-episodes": 2, "num-server-rounds": 3, "gaa-window": 2}
    _run(tmp_path / "whole", **episodes)
    cut = tmp_path / "cut"
    _interrupted(cut, after=after, **episodes)
    _run(tmp_path / "x", node_ids=OTHER_IDS, resume=str(cut), **episodes)
    done = _results(cut)
    assert [(r["episode"], r["round"]) for r in done["rounds"]] == [
        (e, r) for e in (1, 2) for r in range(4)
    ]
    assert_bit_equal(final_state(tmp_path / "whole"), final_state(cut))
    assert comparable(done) == comparable(_results(tmp_path / "whole"))


def test_resume_with_a_server_side_attack_and_a_robust_rule(tmp_path) -> None:
    robust = {
        "strategy": "faba",
        "attack": "alie",
        "assumed-byzantine-fraction": 0.25,
        "byzantine-fraction": 0.25,
        "fraction-train": 1.0,
    }
    _run(tmp_path / "whole", **robust)
    cut = tmp_path / "cut"
    _interrupted(cut, after=3, **robust)
    _run(tmp_path / "x", node_ids=OTHER_IDS, resume=str(cut), **robust)
    assert_bit_equal(final_state(tmp_path / "whole"), final_state(cut))
    assert comparable(_results(cut)) == comparable(_results(tmp_path / "whole"))


def test_resume_refuses_a_mismatch_before_writing(tmp_path) -> None:
    cut = tmp_path / "cut"
    _interrupted(cut, after=1)
    results = (cut / "results.json").read_bytes()
    with pytest.raises(CheckpointError, match="'learning-rate'"):
        _run(tmp_path / "x", resume=str(cut), **{"learning-rate": 0.1})
    # The same config, but the checkpoint's model is not the one this run builds.
    payload = load_checkpoint(cut / CHECKPOINT_FILE)
    first = next(iter(payload["arrays"]))
    intact = payload["arrays"][first]
    payload["arrays"][first] = intact[:1]
    save_checkpoint(cut / CHECKPOINT_FILE, payload)
    with pytest.raises(CheckpointError, match="another model"):
        _run(tmp_path / "x", resume=str(cut))
    # A federation of other partitions cannot take over the nodes' state.
    payload["arrays"][first] = intact
    save_checkpoint(cut / CHECKPOINT_FILE, payload)
    with pytest.raises(CheckpointError, match="partitions"):
        cfg = check_run_config({**GAA_RUN, "output-dir": "x", "resume": str(cut)})
        grid = InProcessGrid({7: 0, 8: 1, 9: 2, 10: 5}, cfg)
        grid.contexts[10].node_config["num-partitions"] = 4
        with server_identity():
            run_server(grid, cfg)
    assert (cut / "results.json").read_bytes() == results
    assert not (tmp_path / "x").exists()


def test_a_failure_is_recorded_with_its_text(tmp_path, monkeypatch) -> None:
    from flwr_byz.app.round_log import RoundLog

    def boom(self, *args, **kwargs):
        raise ValueError("the bookkeeping broke")

    monkeypatch.setattr(RoundLog, "on_train", boom)
    with pytest.raises(ValueError, match="the bookkeeping broke"):
        _run(tmp_path / "f")
    failed = _results(tmp_path / "f")
    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: the bookkeeping broke"


def test_the_restored_model_record_round_trips_exactly(tmp_path) -> None:
    _run(tmp_path / "r", **{"num-server-rounds": 1})
    arrays = final_state(tmp_path / "r")["arrays"]
    again = ArrayRecord(arrays).to_torch_state_dict()
    for key, value in arrays.items():
        assert torch.equal(again[key], value) and again[key].dtype == value.dtype


def test_a_run_stopped_after_its_last_round_resumes_to_its_summary(tmp_path) -> None:
    short = {"num-server-rounds": 2}
    _run(tmp_path / "whole", **short)
    cut = tmp_path / "cut"
    _interrupted(cut, after=2, **short)  # the last checkpoint, no summary yet
    assert _results(cut)["summary"] is None
    resumed, grid = _run(tmp_path / "x", node_ids=OTHER_IDS, resume=str(cut), **short)
    assert _trained(grid) == []  # nothing left to train
    assert resumed["status"] == "completed"
    assert comparable(_results(cut)) == comparable(_results(tmp_path / "whole"))


def test_sigterm_marks_the_run_interrupted_and_it_resumes(tmp_path, monkeypatch):
    import signal

    # A ServerApp process starts with the default disposition; an earlier test in
    # this process (Ray, inside Flower's simulation) may have left its own handler.
    inherited = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _sigterm_interrupts_and_resumes(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGTERM, inherited)


def _sigterm_interrupts_and_resumes(tmp_path, monkeypatch):
    import signal

    from flwr_byz.app.round_log import RoundLog

    on_train = RoundLog.on_train

    def terminated_in_round_3(self, server_round, *args):
        if server_round == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stops the ServerApp
        return on_train(self, server_round, *args)

    _run(tmp_path / "whole")
    monkeypatch.setattr(RoundLog, "on_train", terminated_in_round_3)
    with pytest.raises(RunInterruptedError, match="SIGTERM"):
        _run(tmp_path / "cut")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored
    stopped = _results(tmp_path / "cut")
    assert stopped["status"] == "interrupted"
    assert stopped["error"] == "RunInterruptedError: signal SIGTERM"
    assert final_state(tmp_path / "cut")["payload"]["round"] == 2

    _run(tmp_path / "x", node_ids=OTHER_IDS, resume=str(tmp_path / "cut"))
    assert _results(tmp_path / "cut")["resumes"][0]["previous-status"] == "interrupted"
    assert_bit_equal(final_state(tmp_path / "whole"), final_state(tmp_path / "cut"))
    assert comparable(_results(tmp_path / "cut")) == comparable(
        _results(tmp_path / "whole")
    )


@pytest.mark.timeout(180)
def test_a_run_stopped_for_want_of_nodes_is_interrupted_and_resumes(tmp_path):
    """Liveness: nodes gone past node-wait-timeout stop the run ("interrupted",
    the summary of the rounds so far kept); once they are back it resumes."""
    from link_federation import dies_in_round
    from test_liveness_app import app_federation, partitions

    from flwr_byz.strategy.sampling import NotEnoughNodesError

    settings = {
        "strategy": "faba",
        "attack": "scaling",
        "byzantine-fraction": 0.25,
        "assumed-byzantine-fraction": 0.25,
        "fraction-train": 1.0,
        "num-server-rounds": 3,
        "min-available-nodes": 4,
        "node-wait-timeout": 1.0,
    }
    cut = tmp_path / "cut"
    cfg = check_run_config({**GAA_RUN, **settings, "output-dir": str(cut)})
    fed = app_federation(cfg, partitions(4))
    fed.behaviours[fed.node_ids[0]] = dies_in_round(
        fed, fed.node_ids[0], 2, fed.behaviour
    )
    with fed, pytest.raises(NotEnoughNodesError):
        run_server(fed.grid, cfg)
    stopped = _results(cut)
    assert stopped["status"] == "interrupted"
    assert stopped["summary"]["stopped"].startswith("after round 2")
    assert "NotEnoughNodesError" in stopped["error"]

    cfg = check_run_config({**GAA_RUN, **settings, "resume": str(cut)})
    with app_federation(cfg, partitions(4)) as back:
        run_server(back.grid, cfg)
    done = _results(cut)
    assert done["status"] == "completed" and "stopped" not in done["summary"]
    assert [r["round"] for r in done["rounds"]] == [0, 1, 2, 3]
    assert done["resumes"][0]["previous-status"] == "interrupted"
