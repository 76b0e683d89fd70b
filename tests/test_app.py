"""The Flower app of this repo, run for real through `flwr run` and a SuperLink."""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from run_comparison import assert_bit_equal, comparable, final_state
from small_runs import GAA_WINDOW_RUN, SMALL_RUN

from flwr_byz.app.config import (
    RunConfigError,
    app_defaults,
    check_against_nodes,
    check_run_config,
    check_run_dir,
)
from flwr_byz.deploy.local_superlink import LocalSuperLink
from flwr_byz.deploy.processes import kill_now, processes_with_home

REPO = Path(__file__).resolve().parents[1]


def pyproject_run_config() -> dict:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["flwr"]["app"]["config"]


def test_pyproject_lists_every_key_and_its_values_are_valid() -> None:
    # `flwr run --run-config` can only override keys that pyproject.toml lists.
    assert set(pyproject_run_config()) == set(app_defaults())
    cfg = check_run_config(pyproject_run_config())
    check_against_nodes(cfg, 10)


def test_defaults_are_valid() -> None:
    cfg = check_run_config({})
    assert cfg == app_defaults()
    check_against_nodes(cfg, 10)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("strategy", "fedprox", "strategy"),
        ("attack", "meteor", "attack"),
        ("byzantine-fraction", 1.5, "byzantine-fraction"),
        ("assumed-byzantine-fraction", 0.5, "assumed-byzantine-fraction"),
        ("num-server-rounds", 0, "num-server-rounds"),
        ("attack-pattern", "sometimes", "attack-pattern"),
        ("pretense-rounds", -1, "pretense-rounds"),
        ("dataset", "files", "data-path"),  # files need a path
        ("device", "tpu", "device"),
        ("gaa-policy", "oracle", "gaa-policy"),
        ("gaa-episodes", 0, "gaa-episodes"),
        ("model", "transformer", "model"),
        ("learning-rate", -0.1, "learning-rate"),
        ("no-such-key", 1, "unknown run-config key(s) 'no-such-key'"),
        ("output-dir", "", "output-dir"),
        ("output-dir", "../elsewhere", "output-dir"),
        ("output-dir", "results/../../etc", "output-dir"),
        ("output-dir", "/tmp/flwr-byz/../etc", "output-dir"),  # absolute, too
        ("round-timeout", 1e-9, "round-timeout"),
        ("node-wait-timeout", 0.5, "node-wait-timeout"),
    ],
)
def test_each_bad_value_is_named(key: str, value: object, named: str) -> None:
    with pytest.raises(RunConfigError) as info:
        check_run_config({key: value})
    message = str(info.value)
    assert named in message
    if named == key:
        assert str(value) in message


def test_output_dir_inside_the_working_directory_or_absolute() -> None:
    for value in ("results", "runs/a/b", "/tmp/flwr-byz-results"):
        assert check_run_config({"output-dir": value})["output-dir"] == value
    with pytest.raises(RunConfigError, match=r"without '\.\.'"):
        check_run_config({"output-dir": "/tmp/a/../b"})


@pytest.mark.parametrize("key", ["round-timeout", "node-wait-timeout"])
def test_timeouts_have_a_minimum_and_say_what_to_set(key: str) -> None:
    for bad in (1e-9, 0.999, float("nan"), float("inf")):
        with pytest.raises(RunConfigError, match=f"'{key}'.*at least 1"):
            check_run_config({key: bad})
    assert check_run_config({key: 1})[key] == 1


def test_an_output_dir_that_is_a_file_is_refused_before_the_run(
    tmp_path: Path,
) -> None:
    """The real ServerApp ``run``: a file where the run directory (or one of its
    parents) would be stops the run before it waits for a node, names the key,
    and leaves the file as it was."""
    from link_federation import LinkFederation, silent

    from flwr_byz.app.server_run import run_server

    in_the_way = tmp_path / "results"
    in_the_way.write_text("keep me")
    for value in (str(in_the_way), str(in_the_way / "{run}")):
        # Without the check, the run would wait for nodes and fail on that.
        cfg = check_run_config({"output-dir": value, "node-wait-timeout": 1.0})
        with LinkFederation(0, silent) as fed, pytest.raises(RunConfigError) as info:
            run_server(fed.grid, cfg)
        message = str(info.value)
        assert "'output-dir'" in message and "is a file" in message, message
        assert str(in_the_way) in message
        assert in_the_way.read_text() == "keep me"
    check_run_dir(tmp_path / "new" / "run", "x")  # a path to create: fine


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere"
)
def test_an_output_dir_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(RunConfigError, match=r"'output-dir'.*not writable"):
            check_run_dir(locked / "run", str(locked / "run"))
    finally:
        locked.chmod(0o700)


def test_episodes_need_gaa() -> None:
    with pytest.raises(RunConfigError, match="'gaa-episodes' = 2 needs strategy"):
        check_run_config({"strategy": "faba", "gaa-episodes": 2})
    assert check_run_config({"gaa-episodes": 2})["gaa-episodes"] == 2


def test_rule_bound_is_checked_against_the_federation() -> None:
    cfg = check_run_config({"strategy": "bulyan", "assumed-byzantine-fraction": 0.3})
    with pytest.raises(RunConfigError, match="at least 15 replies"):
        check_against_nodes(cfg, 10)  # f = 3: Bulyan needs 4f + 3 = 15 > 10


SMALL = {"num-server-rounds": 3, **SMALL_RUN}


def _run(superlink: LocalSuperLink, tmp: Path, **overrides) -> tuple[dict, str]:
    cfg = {**SMALL, **overrides, "output-dir": str(tmp)}
    done = superlink.run(REPO, cfg, num_supernodes=4, timeout=600)
    log = done.stdout + done.stderr
    path = tmp / "results.json"
    return (json.loads(path.read_text()) if path.exists() else {}), log


@pytest.mark.slow
def test_three_rounds_write_every_field(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    first, log = _run(superlink, tmp_path / "a")
    assert first, log[-3000:]
    assert first["summary"] is not None, log[-3000:]
    assert first["config"]["strategy"] == "faba"
    assert set(first["versions"]) >= {"flwr", "torch", "flwr-byz"}
    truth = first["ground-truth"]
    assert len(truth["byzantine-partition-ids"]) == 2  # floor(0.5 · 4)
    assert len(truth["byzantine-node-ids"]) == 2
    assert len(truth["node-partitions"]) == 4
    rounds = first["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for entry in rounds[1:]:
        for field in (
            "accuracy",
            "loss",
            "rejected",
            "removed-node-ids",
            "selected-node-ids",
            "round-time-s",
        ):
            assert field in entry, field
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert len(entry["removed-node-ids"]) == 1  # f = floor(0.25 · 4)
        # Where the round's time goes: the strategy's own part, and the clients'.
        assert 0.0 < entry["aggregate-time-s"] < entry["train-time-s"]
        assert 0.0 < entry["client-train-time-s"] < entry["train-time-s"]
    assert "Byzantine partitions (truth)" in log
    # Same seed, same numbers: a second run of this config would be a third full
    # run of the app here; the resumed runs below equal an uninterrupted one field
    # for field, and test_grid_jobs runs identical cells twice.


@pytest.mark.slow
def test_bad_value_stops_the_run_before_round_one(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    results, log = _run(superlink, tmp_path, strategy="fedprox")
    assert "'strategy'" in log and "fedprox" in log, log[-3000:]
    assert "[ROUND 1" not in log
    assert not results


@pytest.mark.slow
def test_gaa_episodes_restart_the_model_and_report_each_episode(
    superlink: LocalSuperLink, tmp_path: Path
) -> None:
    done, log = _run(
        superlink,
        tmp_path,
        strategy="gaa",
        **{"gaa-episodes": 2, "num-server-rounds": 2, "gaa-window": 3},
    )
    assert done.get("summary"), log[-3000:]
    rounds = done["rounds"]
    assert [(r["episode"], r["round"]) for r in rounds] == [
        (1, 0),
        (1, 1),
        (1, 2),
        (2, 0),
        (2, 1),
        (2, 2),
    ]
    # θ restarts: both episodes begin from the same model.
    assert rounds[0]["accuracy"] == rounds[3]["accuracy"]
    assert rounds[0]["loss"] == rounds[3]["loss"]
    # Each window was cut by the end of its training: ψ learnt at the restart,
    # so the second episode's credits are not the first one's.
    assert rounds[4]["weights"] != rounds[1]["weights"]
    episodes = done["summary"]["episodes"]
    assert [e["episode"] for e in episodes] == [1, 2]
    assert episodes[-1]["final-accuracy"] == done["summary"]["final-accuracy"]
    assert "episode 2:" in log


GAA_RESUME = {**GAA_WINDOW_RUN, "seed": 7}


@pytest.fixture(scope="module")
def gaa_whole(superlink: LocalSuperLink, tmp_path_factory) -> Path:
    """The uninterrupted run that the resumed ones must equal."""
    out = tmp_path_factory.mktemp("gaa") / "whole"
    whole, log = _run(superlink, out, **GAA_RESUME)
    assert whole.get("status") == "completed", log[-3000:]
    return out


def _resume_on_a_new_superlink(cut: Path, tmp_path: Path) -> tuple[dict, str]:
    """Continue the run in ``cut`` on a fresh SuperLink (new node ids)."""
    with LocalSuperLink() as restarted:
        done = restarted.run(
            REPO,
            {
                **SMALL,
                **GAA_RESUME,
                "output-dir": str(tmp_path / "ignored"),
                "resume": str(cut),
            },
            num_supernodes=4,
            timeout=600,
        )
    assert not (tmp_path / "ignored").exists()  # a resume goes on in its own dir
    return json.loads((cut / "results.json").read_text()), done.stdout + done.stderr


def _assert_equals_uninterrupted(cut: Path, whole: Path) -> None:
    """Final model, GAA log-credits, credits, rounds and summary: bit for bit."""
    assert_bit_equal(final_state(whole), final_state(cut))
    assert comparable(json.loads((cut / "results.json").read_text())) == (
        comparable(json.loads((whole / "results.json").read_text()))
    )


def _last_round(run_dir: Path) -> int:
    try:
        rounds = json.loads((run_dir / "results.json").read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return -1
    return rounds[-1]["round"] if rounds else -1


@pytest.mark.slow
def test_a_run_whose_superlink_is_killed_resumes_bit_for_bit(
    gaa_whole: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut"
    config = {**SMALL, **GAA_RESUME, "output-dir": str(cut)}
    with LocalSuperLink() as doomed, (tmp_path / "flwr-run.log").open("w") as out:
        flwr = subprocess.Popen(
            doomed.run_command(REPO, config, num_supernodes=4),
            env=doomed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while (
                _last_round(cut) < 2
                and flwr.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            # A crash: the SuperLink and everything it started (the simulation
            # process with the ServerApp and the ClientApps) die at once, SIGKILL.
            # (A SIGTERM to the SuperLink alone gives the simulation time to end.)
            assert doomed.process is not None
            kill_now([doomed.process], processes_with_home(doomed.flwr_home))
        finally:
            if flwr.poll() is None:
                flwr.kill()
            flwr.wait(timeout=60)
    log = (tmp_path / "flwr-run.log").read_text()
    stopped = json.loads((cut / "results.json").read_text())
    # Killed outright, the ServerApp had no chance to say more than "running".
    assert stopped["status"] == "running", log[-3000:]
    from flwr_byz.app.checkpoint import load_checkpoint

    at = load_checkpoint(cut / "checkpoint.pt")["round"]
    # results.json is flushed before the round's checkpoint: it may be one ahead.
    assert 1 <= at < 5 and _last_round(cut) in (at, at + 1), log[-3000:]

    resumed, log = _resume_on_a_new_superlink(cut, tmp_path)
    assert resumed["status"] == "completed", log[-3000:]
    assert "error" not in resumed
    assert not set(resumed["ground-truth"]["node-partitions"]) & set(
        stopped["ground-truth"]["node-partitions"]
    )  # other node ids: matched to the checkpoint's by partition
    assert resumed["resumes"][0]["after-round"] == at
    assert resumed["resumes"][0]["previous-status"] == stopped["status"]
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3, 4, 5]
    _assert_equals_uninterrupted(cut, gaa_whole)
