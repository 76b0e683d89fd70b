"""A run's recorded status is the truth a script gets: ``results.json``'s verdict on
its rounds, ``flwr-byz status`` and ``flwr-byz run`` exit codes.

The fast tests judge records and replies; the slow ones run ``flwr-byz run``
(``flwr run --stream``) against a private SuperLink with the real ServerApp and
ClientApps: a healthy run exits 0, an invalid strategy, a run in which no round
aggregates and a ClientApp whose ``byzantine_mod`` names no attacker exit 1, and a
resubmission into a finished run's directory is refused without suggesting
``resume``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import Error, Message, Metadata, MetricRecord
from flwr.common.constant import ErrorCode
from small_runs import SMALL_RUN

from flwr_byz.app.results import (
    ResultsFile,
    RunDirectoryError,
    check_unused,
    run_health,
)
from flwr_byz.app.round_log import RoundLog
from flwr_byz.attacks import CONFIGURATION_ERROR, byzantine_mod
from flwr_byz.configuration_errors import (
    ClientConfigurationError,
    stop_on_configuration_errors,
)
from flwr_byz.deploy.local_superlink import LocalSuperLink, run_config_arg
from flwr_byz.experiments.cli import EXIT_CODES, main, run_status

REPO = Path(__file__).resolve().parents[1]


def _round(number: int, status: int | None, **extra) -> dict:
    entry = {"round": number, "episode": 1, "node-ids": [1, 2], **extra}
    if status is not None:
        entry["status"] = status
    return entry


# ----------------------------------------------------------------------------------
# The verdict on a run's rounds
# ----------------------------------------------------------------------------------


def test_a_run_whose_rounds_mostly_aggregate_is_completed() -> None:
    rounds = [{"round": 0}, _round(1, 0), _round(2, 1), _round(3, 0), _round(4, 1)]
    assert run_health(rounds) == ("completed", "")  # 2 of 4: half is enough


def test_a_run_in_which_no_round_aggregated_is_failed_with_the_reason() -> None:
    missing = [{"node-id": 5, "partition-id": 0, "reason": "timed-out"}]
    rejected = [{"node-id": 6, "partition-id": 1, "reason": "non-finite"}]
    rounds = [
        {"round": 0},
        _round(1, 1, missing=missing, rejected=rejected, **{"node-ids": []}),
        _round(2, 1, **{"node-ids": []}),
    ]
    status, reason = run_health(rounds)
    assert status == "failed"
    assert "no training round updated the model: 2 of 2" in reason
    assert "bound-failed ×2" in reason
    assert "round 1: 0 valid replies, 1 rejected (non-finite ×1)" in reason
    assert "1 missing (timed-out ×1)" in reason


def test_a_run_in_which_fewer_than_half_aggregated_is_degraded() -> None:
    rounds = [{"round": 0}, _round(1, 1), _round(2, 3), _round(3, 0)]
    status, reason = run_health(rounds)
    assert status == "degraded"
    assert "2 of 3" in reason and "non-finite-result ×1" in reason


def test_a_strategy_without_a_status_is_judged_by_whether_the_model_moved() -> None:
    still = [_round(r, None, **{"model-updated": False}) for r in (1, 2)]
    assert run_health([{"round": 0}, *still])[0] == "failed"
    assert "not-aggregated ×2" in run_health(still)[1]
    moved = [_round(r, None, **{"model-updated": True}) for r in (1, 2)]
    assert run_health(moved) == ("completed", "")


def _results_file(tmp_path: Path) -> ResultsFile:
    return ResultsFile(
        tmp_path,
        {"strategy": "faba", "attack": "none", "attack-pattern": "static"},
        {
            "byzantine-partition-ids": [],
            "byzantine-node-ids": [],
            "node-partitions": {},
        },
    )


def test_finish_records_the_verdict_and_the_status_command_exits_by_it(
    tmp_path: Path, capsys
) -> None:
    results = _results_file(tmp_path)
    results.add_round({"round": 0, "accuracy": 0.5})
    results.add_round(_round(1, 1, accuracy=0.5))
    results.finish({"final-accuracy": 0.5})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "failed"
    assert data["reason"].startswith("no training round updated the model")
    assert main(["status", str(tmp_path)]) == EXIT_CODES["failed"] == 1
    assert "flwr-byz status: failed: no training round" in capsys.readouterr().out


def test_status_exit_codes_are_distinct_and_zero_only_for_completed(
    tmp_path: Path,
) -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert [s for s, c in EXIT_CODES.items() if c == 0] == ["completed"]
    assert run_status(tmp_path)[0] == "no results"
    assert main(["status", str(tmp_path / "nowhere")]) == EXIT_CODES["no results"]
    (tmp_path / "results.json").write_text("{not json")
    assert main(["status", str(tmp_path)]) == EXIT_CODES["no results"]
    for status in ("running", "interrupted", "degraded", "completed"):
        data = {"status": status, "rounds": [], "summary": {}, "error": "why"}
        (tmp_path / "results.json").write_text(json.dumps(data))
        assert main(["status", str(tmp_path / "results.json")]) == EXIT_CODES[status]


def test_a_file_recorded_completed_without_an_aggregated_round_is_not_healthy(
    tmp_path: Path,
) -> None:
    """A results.json written before the verdict existed is judged by its rounds."""
    data = {
        "status": "completed",
        "summary": {"final-accuracy": 0.5},
        "rounds": [{"round": 0}, _round(1, 1), _round(2, 1)],
    }
    (tmp_path / "results.json").write_text(json.dumps(data))
    status, reason = run_status(tmp_path)
    assert status == "failed" and "recorded completed" in reason
    assert main(["status", str(tmp_path)]) == 1


def test_the_summary_says_why_a_run_is_not_completed(tmp_path: Path) -> None:
    results = _results_file(tmp_path)
    results.data["config"].update(
        {"byzantine-fraction": 0.0, "num-server-rounds": 1, "detection-k": 0}
    )
    log = RoundLog(results, {}, [])
    log.on_evaluate(0, MetricRecord({"accuracy": 0.5, "loss": 0.7}))
    log.on_train(1, MetricRecord({"status": 1}), 0.1)
    log.on_evaluate(1, MetricRecord({"accuracy": 0.5, "loss": 0.7}))
    summary = log.summary(object(), 0, 1.0)
    results.finish(summary)
    lines = "\n".join(log.summary_lines(summary, results.path))
    assert "status: FAILED: no training round updated the model" in lines


def test_the_round_log_records_whether_a_status_less_round_moved_the_model(
    tmp_path: Path,
) -> None:
    import numpy as np
    from flwr.app import Array, ArrayRecord

    results = _results_file(tmp_path)
    log = RoundLog(results, {}, [])
    first = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    moved = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    metrics = MetricRecord({"accuracy": 0.5, "loss": 0.7})
    log.see_model(first)
    log.on_evaluate(0, metrics)
    for number, arrays in ((1, first), (2, moved)):
        log.on_train(number, None, 0.1)  # FedAvg-like: no status
        log.see_model(arrays)
        log.on_evaluate(number, metrics)
    rounds = results.data["rounds"]
    assert [r.get("model-updated") for r in rounds] == [None, False, True]


# ----------------------------------------------------------------------------------
# A resubmission into a finished run's directory
# ----------------------------------------------------------------------------------


def _write(run_dir: Path, **data) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"rounds": [], **data}))


@pytest.mark.parametrize(
    ("data", "suggests_resume"),
    [
        ({"status": "completed", "summary": {}}, False),
        ({"status": "degraded", "summary": {}}, False),
        ({"status": "failed", "summary": {}}, False),  # no round aggregated
        ({"status": "failed", "summary": None}, True),  # an exception mid-run
        ({"status": "interrupted", "summary": None}, True),
        ({"status": "running", "summary": None}, True),
    ],
)
def test_resume_is_suggested_only_for_a_run_with_rounds_left(
    tmp_path: Path, data: dict, suggests_resume: bool
) -> None:
    _write(tmp_path, **data)
    with pytest.raises(RunDirectoryError) as caught:
        check_unused(tmp_path)
    text = str(caught.value)
    assert f"status {data['status']}" in text
    assert ("resume =" in text) is suggests_resume
    if not suggests_resume:
        assert "nothing to resume" in text


# ----------------------------------------------------------------------------------
# Every reply a configuration error of byzantine_mod: the run stops
# ----------------------------------------------------------------------------------


def _error_reply(reason: str, node_id: int) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=f"r{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="i",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(
        metadata=metadata,
        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
    )


def _raised_on_a_node(mod) -> str:
    """The error reason Flower reports for what ``mod`` raises on a node."""
    from test_attacks_mod import _ctx, _msg, _user_app

    try:
        _user_app([mod])(_msg(1), _ctx({"num-server-rounds": 3}))
    except Exception as ex:  # as Flower's ClientApp runner formats it
        return str(type(ex)) + ":<'" + str(ex) + "'>"
    raise AssertionError("the mod did not raise")


def test_a_round_of_only_configuration_errors_stops_the_run() -> None:
    bare = _raised_on_a_node(byzantine_mod)
    no_fraction = _raised_on_a_node(byzantine_mod(attack="sign-flip"))
    assert CONFIGURATION_ERROR in bare and CONFIGURATION_ERROR in no_fraction
    replies = [_error_reply(bare, 11), _error_reply(no_fraction, 12)]
    with pytest.raises(ClientConfigurationError, match="round 3: every reply") as err:
        stop_on_configuration_errors(3, replies)
    # The mod's own words, without what Flower wrapped around them.
    assert str(err.value).endswith(
        "The first: byzantine_mod configuration error: no attack configured: the run "
        "config has no 'attack' key and the mod was given no arguments, so every "
        "node would run honest. Configure it in the app: ClientApp(mods=["
        'byzantine_mod(attack="sign-flip", fraction=0.3, seed=0)]), or define the '
        'attack keys in [tool.flwr.app.config] (attack = "none" for an honest run).'
    )
    # One other error, or no reply at all: the round goes on as a round.
    stop_on_configuration_errors(3, [*replies, _error_reply("out of memory", 13)])
    stop_on_configuration_errors(3, [])


def test_a_flwr_byz_strategy_in_any_app_stops_on_a_round_of_configuration_errors():
    """Not only this app's ServerApp: a strategy imported into a user's app (e.g.
    Flower's quickstart with the mod) raises instead of freezing every round."""
    from strategy_helpers import instructions, model_arrays, server_identity

    from flwr_byz.strategy import FABA

    reason = _raised_on_a_node(byzantine_mod)
    strategy = FABA(num_malicious_nodes=0)
    with server_identity():
        msgs = instructions(strategy, 1, model_arrays(0), [1, 2, 3])
        replies = [
            Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                reply_to=m,
            )
            for m in msgs
        ]
        with pytest.raises(ClientConfigurationError, match="round 1: every reply"):
            strategy.aggregate_train(1, replies)
        # One ordinary error among them: a round like any other.
        replies[0] = Message(Error(code=0, reason="out of memory"), reply_to=msgs[0])
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num-valid"] == 0


# ----------------------------------------------------------------------------------
# flwr-byz run against a real SuperLink
# ----------------------------------------------------------------------------------

SMALL = {"num-server-rounds": 2, **SMALL_RUN}


def _flwr_byz_run(
    superlink: LocalSuperLink, app: Path, cfg: dict
) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "flwr-byz"),
        "run",
        str(app),
        "--federation-config",
        "num-supernodes=4",
        "--run-config",
        run_config_arg(cfg),
    ]
    return subprocess.run(
        command,
        env=superlink.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_flwr_byz_run_exits_zero_for_a_healthy_run_and_refuses_a_resubmission(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    run_dir = tmp_path / "good"
    done = _flwr_byz_run(superlink, REPO, {**SMALL, "output-dir": str(run_dir)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert _last_line(done) == "flwr-byz status: completed"
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    status = subprocess.run(
        [str(Path(sys.executable).parent / "flwr-byz"), "status", str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (status.returncode, status.stdout.strip()) == (
        0,
        "flwr-byz status: completed",
    )
    # The same directory again: refused before round 1, without touching the
    # finished run's results, and without suggesting to resume a finished run.
    before = (run_dir / "results.json").read_bytes()
    again = _flwr_byz_run(superlink, REPO, {**SMALL, "output-dir": str(run_dir)})
    assert again.returncode == EXIT_CODES["failed"], again.stdout[-3000:]
    assert _last_line(again).startswith("flwr-byz status: failed: RunDirectoryError")
    assert "nothing to resume" in again.stdout
    assert f"resume = '{run_dir}'" not in again.stdout
    assert (run_dir / "results.json").read_bytes() == before


@pytest.mark.slow
def test_flwr_byz_run_exits_non_zero_for_an_invalid_strategy(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    done = _flwr_byz_run(
        superlink, REPO, {**SMALL, "strategy": "fedprox", "output-dir": str(tmp_path)}
    )
    assert done.returncode == EXIT_CODES["failed"], done.stdout[-3000:]
    last = _last_line(done)
    assert last.startswith("flwr-byz status: failed: invalid run configuration")
    assert "fedprox" in last


@pytest.mark.slow
def test_flwr_byz_run_exits_non_zero_when_no_round_aggregates(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    """Every node sends a non-finite update (a random fault of mean 1e39 overflows
    float32): every reply is rejected, no round updates the model."""
    cfg = {
        **SMALL,
        "byzantine-partitions": "0,1,2,3",
        "noise-mean": 1e39,
        "output-dir": str(tmp_path),
    }
    done = _flwr_byz_run(superlink, REPO, cfg)
    assert done.returncode == EXIT_CODES["failed"], done.stdout[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["status"] == "failed"
    assert data["reason"].startswith("no training round updated the model: 2 of 2")
    assert data["summary"]["final-accuracy"] == data["summary"]["initial-accuracy"]
    assert "status: FAILED: no training round updated the model" in done.stdout
    assert _last_line(done).startswith("flwr-byz status: failed: no training round")


_MISCONFIGURED_CLIENT = '''\
"""This repository's ClientApp behind a byzantine_mod that names no attacker."""

from flwr.clientapp import ClientApp

from clients.client_app import app as honest
from flwr_byz.attacks import byzantine_mod

app = ClientApp(mods=[byzantine_mod(attack="sign-flip", run_config_override=False)])


@app.train()
def train(msg, context):
    return honest(msg, context)


@app.query()
def query(msg, context):
    return honest(msg, context)
'''


@pytest.mark.slow
def test_a_misconfigured_mod_stops_the_run_at_round_one(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for package in ("server", "clients"):
        shutil.copytree(
            REPO / package, app / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (app / "misconfigured.py").write_text(_MISCONFIGURED_CLIENT)
    pyproject = (REPO / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(
        pyproject.replace(
            'clientapp = "clients.client_app:app"', 'clientapp = "misconfigured:app"'
        )
    )
    run_dir = tmp_path / "run"
    cfg = {
        **SMALL,
        "num-server-rounds": 3,
        # Bounds the identity query, which every node answers with the error.
        "node-wait-timeout": 15.0,
        "output-dir": str(run_dir),
    }
    done = _flwr_byz_run(superlink, app, cfg)
    assert done.returncode == EXIT_CODES["failed"], done.stdout[-3000:]
    data = json.loads((run_dir / "results.json").read_text())
    assert data["status"] == "failed"
    assert data["error"].startswith("ClientConfigurationError: round 1: every reply")
    assert (
        "The first: byzantine_mod configuration error: attack='sign-flip' names "
        "no attacker" in data["error"]
    )
    assert [r["round"] for r in data["rounds"]] == [0]  # stopped in round 1
    assert _last_line(done).startswith(
        "flwr-byz status: failed: ClientConfigurationError"
    )


@pytest.mark.parametrize(
    ("data", "done"),
    [
        ({"status": "completed", "summary": {}}, True),
        ({"status": "degraded", "summary": {}}, True),
        ({"status": "failed", "summary": {}}, True),  # played, nothing aggregated
        ({"status": "failed", "summary": None}, False),  # an exception: rerun
        ({"status": "interrupted", "summary": {"stopped": "nodes"}}, False),
        ({"summary": {}}, True),  # written before statuses
    ],
)
def test_a_grid_cell_that_played_all_its_rounds_is_finished(
    tmp_path: Path, data: dict, done: bool
) -> None:
    """A degraded or failed verdict is an experiment's outcome: the grid keeps it
    instead of running the cell again."""
    from flwr_byz.experiments.grid import finished

    _write(tmp_path, **data)
    assert finished(tmp_path / "results.json") is done


def test_flwr_byz_run_decides_from_the_file_then_the_streamed_status(
    tmp_path: Path,
) -> None:
    from flwr_byz.experiments.cli import _ended_run_status

    # A ServerApp killed outright leaves "running": nothing runs it any more.
    _write(tmp_path, status="running", summary=None)
    status, reason = _ended_run_status(tmp_path / "results.json", None, 0)
    assert status == "interrupted" and "still says running" in reason
    # The file wins over the streamed line; a file not readable here (a remote
    # SuperLink) leaves the streamed status.
    _write(tmp_path, status="failed", summary=None, error="ValueError: x")
    streamed = ("completed", "")
    assert _ended_run_status(tmp_path / "results.json", streamed, 0) == (
        "failed",
        "ValueError: x",
    )
    remote = tmp_path / "elsewhere" / "results.json"
    assert _ended_run_status(remote, ("degraded", "why"), 0) == ("degraded", "why")
    status, reason = _ended_run_status(None, None, 1)
    assert status == "no results" and "exited with code 1" in reason
