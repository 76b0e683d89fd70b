"""The grid's cells: identity and validation before anything runs (fast)."""

from __future__ import annotations

import pytest

from flwr_byz.app.config import app_defaults
from flwr_byz.experiments.cli import main
from flwr_byz.experiments.grid import GridSpec, cell_name, check_grid

AXES = {"strategy": "faba", "attack": "sign-flip", "byzantine-fraction": 0.3, "seed": 0}


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.375
    return f"{value}x"


def test_changing_any_run_config_value_changes_the_cell() -> None:
    base = {**app_defaults(), **AXES}
    name = cell_name(base)
    assert name == "faba__sign-flip__b0.3__s0"  # defaults add nothing: old names hold
    seen = {name}
    for key, value in app_defaults().items():
        if key in AXES or key in ("output-dir", "resume", "fault-stop-after-round"):
            continue  # where results go, which run to resume, fault injection
        changed = cell_name({**base, key: _other(value)})
        assert changed != name, key
        assert changed not in seen, key
        seen.add(changed)
    assert cell_name({**base, "output-dir": "elsewhere"}) == name


def test_long_or_odd_values_get_a_digest_name() -> None:
    cell = {**AXES, "data-path": "/very/long/" + "x" * 300 + ".parquet"}
    name = cell_name(cell)
    assert name.startswith("faba__sign-flip__b0.3__s0__cfg-") and len(name) < 80
    assert cell_name({**cell, "data-path": cell["data-path"] + "2"}) != name


def test_a_cell_the_app_refuses_fails_before_anything_runs(capsys) -> None:
    spec = GridSpec(["bulyan"], ["sign-flip"], [0.3], [0], num_supernodes=10)
    with pytest.raises(ValueError, match="needs at least 15 replies"):
        check_grid(spec)
    code = main(
        [
            "grid",
            "--strategies",
            "bulyan",
            "--attacks",
            "sign-flip",
            "--fractions",
            "0.3",
            "--dry-run",
        ]
    )
    assert code == 2
    assert "bulyan__sign-flip__b0.3__s0" in capsys.readouterr().err


def test_an_unfinished_cell_resumes_from_its_checkpoint_or_runs_afresh(tmp_path):
    from flwr_byz.experiments.grid import cell_overrides

    cell = {"strategy": "faba", "attack": "alie", "byzantine-fraction": 0.3, "seed": 1}
    fresh = tmp_path / "fresh"
    assert cell_overrides(cell, fresh) == {**cell, "output-dir": str(fresh)}

    # Cut short after a round: its checkpoint is continued, nothing is moved.
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "results.json").write_text('{"status": "interrupted"}')
    (cut / "checkpoint.pt").write_bytes(b"x")
    assert cell_overrides(cell, cut)["resume"] == str(cut)
    assert (cut / "results.json").exists()

    # Stopped before its first checkpoint: that record is kept aside, never lost.
    early = tmp_path / "early"
    early.mkdir()
    for number in (1, 2):
        (early / "results.json").write_text(f'{{"attempt": {number}}}')
        overrides = cell_overrides(cell, early)
        assert "resume" not in overrides
        assert not (early / "results.json").exists()
    assert (early / "results.1.stale.json").read_text() == '{"attempt": 1}'
    assert (early / "results.2.stale.json").read_text() == '{"attempt": 2}'
    # Neither changes the cell's identity.
    assert cell_name({**cell, "resume": "x", "fault-stop-after-round": 2}) == (
        cell_name(cell)
    )
