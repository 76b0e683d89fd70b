"""The Flower app of this repo, run for real through `flwr run` and a SuperLink."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from flwr_byz.app.config import (
    RunConfigError,
    app_defaults,
    check_against_nodes,
    check_run_config,
)
from flwr_byz.app.results import without_timings
from flwr_byz.experiments.local_superlink import LocalSuperLink

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


def test_episodes_need_gaa() -> None:
    with pytest.raises(RunConfigError, match="'gaa-episodes' = 2 needs strategy"):
        check_run_config({"strategy": "faba", "gaa-episodes": 2})
    assert check_run_config({"gaa-episodes": 2})["gaa-episodes"] == 2


def test_rule_bound_is_checked_against_the_federation() -> None:
    cfg = check_run_config({"strategy": "bulyan", "assumed-byzantine-fraction": 0.3})
    with pytest.raises(RunConfigError, match="at least 15 replies"):
        check_against_nodes(cfg, 10)  # f = 3: Bulyan needs 4f + 3 = 15 > 10


SMALL = {
    "num-server-rounds": 3,
    "strategy": "faba",
    "byzantine-fraction": 0.5,
    "assumed-byzantine-fraction": 0.25,
    "attack": "random-fault",
    "seed": 7,
}


@pytest.fixture(scope="module")
def superlink():
    with LocalSuperLink() as link:
        yield link


def _run(superlink: LocalSuperLink, tmp: Path, **overrides) -> tuple[dict, str]:
    cfg = {**SMALL, **overrides, "output-dir": str(tmp)}
    done = superlink.run(REPO, cfg, num_supernodes=4, timeout=600)
    log = done.stdout + done.stderr
    path = tmp / "results.json"
    return (json.loads(path.read_text()) if path.exists() else {}), log


@pytest.mark.slow
def test_three_rounds_write_every_field_and_repeat_exactly(
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
    assert "Byzantine partitions (truth)" in log

    second, log2 = _run(superlink, tmp_path / "b")
    assert second["summary"] is not None, log2[-3000:]
    first, second = without_timings(first), without_timings(second)
    assert first["config"].pop("output-dir") != second["config"].pop("output-dir")
    assert first == second


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
        **{"gaa-episodes": 2, "num-server-rounds": 2, "gaa-episode-length": 3},
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
