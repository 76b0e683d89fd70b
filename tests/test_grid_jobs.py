"""Cells run at once: same results as one by one, and a failed cell's own error
(slow: real Flower simulations on private SuperLinks)."""

from __future__ import annotations

import json
import re

import pytest

from flwr_byz.experiments.cli import main

GRID = """
[axes]
seed = [0]
[set]
strategy = "faba"
attack = "sign-flip"
byzantine-fraction = 0.25
num-server-rounds = 2
supernodes = 4
[[group]]            # a cell that crashes after its last round's checkpoint
name = "crashes"
set = { seed = 1, fault-stop-after-round = 2 }
"""
CELL = "faba__sign-flip__b0.25__s{}__num-server-rounds=2__supernodes=4"


def _outcome(path) -> dict:
    """What a run computed (not where, when or with which node ids)."""
    run = json.loads(path.read_text())
    config = {k: v for k, v in run["config"].items() if k != "output-dir"}
    rounds = [(e["round"], e.get("accuracy"), e.get("loss")) for e in run["rounds"]]
    truth = run["ground-truth"]
    return {
        "config": config,
        "rounds": rounds,
        "final": run["summary"]["final-accuracy"],
        "byzantine": truth["byzantine-partition-ids"],
        "partitions": sorted(truth["node-partitions"].values()),
    }


@pytest.mark.slow
def test_two_cells_at_once_match_one_by_one_and_a_failure_names_its_error(
    tmp_path, capsys
) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    together = tmp_path / "together"
    jobs = ["--jobs", "2", "--progress-every", "0"]
    code = main(["grid", str(grid), *jobs, "--out", str(together)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    # Both cells started before either ended: they ran at once.
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\[\d/2\] \S+ \(", line)]
    ends = [
        i for i, line in enumerate(lines) if ": done in " in line or "FAILED" in line
    ]
    assert len(starts) == 2 and len(ends) == 2 and max(starts) < min(ends), out
    assert f"{CELL.format(0)}: round 2/2" in out
    # The failed cell is named with the app's own reason; the other one is kept.
    assert f"cell {CELL.format(1)} (group 'crashes') failed: Run interrupted" in err
    assert "fault injection: stopped after round 2" in err
    assert "finished cells are kept" in err
    failed_log = together / CELL.format(1) / "flwr-run.log"
    assert "fault injection" in failed_log.read_text()
    kept = together / CELL.format(0) / "results.json"
    assert json.loads(kept.read_text())["status"] == "completed"

    # The same cell alone (--seeds 0 folds the crashing group onto it: run once).
    alone = tmp_path / "alone"
    assert (
        main(["grid", str(grid), "--jobs", "1", "--seeds", "0", "--out", str(alone)])
        == 0
    )
    assert sorted(p.name for p in alone.iterdir() if p.is_dir()) == [
        CELL.format(0),
        "plots",
    ]
    first = _outcome(kept)
    assert first == _outcome(alone / CELL.format(0) / "results.json")
    assert first["partitions"] == [0, 1, 2, 3]  # 4 SuperNodes, as the cell says
    assert len(first["rounds"]) == 3 and first["final"] is not None
