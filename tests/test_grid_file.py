"""Grid files, the flags over them, help texts, progress and failure reasons
(fast: nothing runs)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from flwr_byz.deploy.local_superlink import LocalSuperLink
from flwr_byz.experiments import grid_runner
from flwr_byz.experiments.cli import _parser, main
from flwr_byz.experiments.grid import GridSpec, check_grid
from flwr_byz.experiments.grid_file import GridFileError, load_grid_file
from flwr_byz.experiments.grid_progress import (
    GridProgress,
    failure_reason,
    round_started,
)

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "flwr_byz" / "experiments" / "grids"


def _spec(text: str, tmp_path: Path) -> GridSpec:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return load_grid_file(path).spec


def _names(spec: GridSpec) -> list[str]:
    return [cell.name for cell in check_grid(spec)]


def test_shipped_grid_files_are_valid_and_the_docs_show_one() -> None:
    files = sorted(GRIDS.glob("*.toml"))
    assert {f.name for f in files} >= {"smoke.toml", "defences.toml"}
    for path in files:
        cells = check_grid(load_grid_file(path).spec)
        assert len({c.name for c in cells}) == len(cells), path
    page = (REPO / "docs" / "experiments.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", page, re.S)
    assert (GRIDS / "defences.toml").read_text() in blocks


def test_smoke_grid_dry_run_lists_its_cells(capsys) -> None:
    assert main(["grid", str(GRIDS / "smoke.toml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "8 cells"
    names = [line.split(" ")[0].rstrip(":") for line in lines[:-1]]
    assert "faba__sign-flip__b0.25__s0__num-server-rounds=2__supernodes=4" in names
    assert "gaa__none__b0.0__s0__num-server-rounds=2__supernodes=6" in names
    assert len(set(names)) == 8


def test_groups_override_the_base_axes_and_merge_their_values(tmp_path) -> None:
    spec = _spec(
        """
[axes]
strategy = ["faba", "fedavg"]
attack = ["none", "sign-flip"]
byzantine-fraction = [0, 0.3]
[set]
num-server-rounds = 5
[[group]]
name = "pretense"
axes = { strategy = ["gaa"] }
set = { attack-pattern = "pretense", attack = "ipm" }
[[group]]
name = "again"   # the same cells as the base: run once
set = { num-server-rounds = 5 }
""",
        tmp_path,
    )
    cells = check_grid(spec)
    names = [c.name for c in cells]
    rounds = "num-server-rounds=5"
    assert names == [
        f"faba__none__b0.0__s0__{rounds}",
        f"faba__sign-flip__b0.3__s0__{rounds}",
        f"fedavg__none__b0.0__s0__{rounds}",
        f"fedavg__sign-flip__b0.3__s0__{rounds}",
        # The group sets the attack: no longer an axis; ipm pairs only with 0.3.
        f"gaa__ipm__b0.3__s0__attack-pattern=pretense__{rounds}",
    ]
    assert cells[-1].group == "pretense"
    assert cells[-1].config["byzantine-fraction"] == 0.3


def test_a_file_with_groups_and_no_axes_runs_only_its_groups(tmp_path) -> None:
    spec = _spec(
        """
[set]
attack = "sign-flip"
byzantine-fraction = 0.3
[[group]]
name = "a"
axes = { strategy = ["faba", "median"] }
""",
        tmp_path,
    )
    assert _names(spec) == ["faba__sign-flip__b0.3__s0", "median__sign-flip__b0.3__s0"]
    # The flags change the groups; they do not bring the base back.
    flagged = spec.overridden({"seed": [1, 2]}, {})
    assert _names(flagged) == [
        "faba__sign-flip__b0.3__s1",
        "faba__sign-flip__b0.3__s2",
        "median__sign-flip__b0.3__s1",
        "median__sign-flip__b0.3__s2",
    ]


def test_supernodes_is_an_axis_and_part_of_every_other_cells_name(tmp_path) -> None:
    spec = _spec(
        """
[axes]
supernodes = [10, 20, 6]
strategy = ["faba"]
attack = ["sign-flip"]
byzantine-fraction = [0.3]
""",
        tmp_path,
    )
    cells = check_grid(spec)
    assert [(c.supernodes, c.name) for c in cells] == [
        (10, "faba__sign-flip__b0.3__s0"),
        (20, "faba__sign-flip__b0.3__s0__supernodes=20"),
        (6, "faba__sign-flip__b0.3__s0__supernodes=6"),
    ]


def test_every_cell_is_checked_with_its_own_supernodes_before_any_runs(
    tmp_path, capsys, monkeypatch
) -> None:
    # Krum needs n >= 2f + 3: f = 3 of 10 holds, f = 1 of 4 does not.
    path = tmp_path / "grid.toml"
    path.write_text(
        """
[axes]
strategy = ["krum"]
attack = ["sign-flip"]
byzantine-fraction = [0.3]
[[group]]
name = "small"
axes = { supernodes = [10, 4] }
"""
    )
    with pytest.raises(ValueError) as err:
        check_grid(load_grid_file(path).spec)
    message = str(err.value)
    assert "krum__sign-flip__b0.3__s0__supernodes=4 (group 'small')" in message
    assert "needs at least 5 replies" in message and "of 4 nodes" in message

    def no_superlink(*args, **kwargs):
        raise AssertionError("a cell ran although another is invalid")

    monkeypatch.setattr(grid_runner, "LocalSuperLink", no_superlink)
    out = tmp_path / "out"
    assert main(["grid", str(path), "--out", str(out)]) == 2
    assert "supernodes=4" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[axes]\nstrategies = ['faba']", "unknown key 'strategies'.*'strategy'"),
        ("[set]\nnum-rounds = 3", "unknown key 'num-rounds'.*'num-server-rounds'"),
        (
            "[[group]]\nname = 'g'\nset = { supernode = 4 }",
            "unknown key 'supernode' in the values of group 'g'.*'supernodes'",
        ),
        ("seed = [1, 2]", "'seed' at the top level: put it under \\[set\\]"),
        ("output = 'x'", "unknown top-level key 'output'; did you mean 'out'"),
        ("[set]\nseed = [1, 2]", "'seed' = \\[1, 2\\] is not one value"),
        ("[axes]\nseed = 1", "'seed' = 1 is one value, not a list"),
        ("[axes]\nseed = []", "axis 'seed' has no values"),
        ("[axes]\nseed = [1]\n[set]\nseed = 2", "'seed' is both an axis and a shared"),
        ("[[group]]\naxes = { seed = [1] }", "group #1 needs a name"),
        ("[[group]]\nname = 'g'\nsets = {}", "unknown key 'sets' in group #1"),
    ],
)
def test_a_wrong_grid_file_says_what_and_where(tmp_path, text, expected) -> None:
    with pytest.raises((GridFileError, ValueError), match=expected):
        check_grid(_spec(text, tmp_path))


def test_unknown_set_flag_names_the_nearest_key(capsys) -> None:
    assert main(["grid", "--set", "learning-rat=0.1", "--dry-run"]) == 2
    assert "did you mean 'learning-rate'" in capsys.readouterr().err


def test_flags_given_win_over_the_file_in_every_group(tmp_path, capsys) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        """
out = "from-file"
[axes]
strategy = ["faba"]
attack = ["sign-flip"]
byzantine-fraction = [0.3]
seed = [0, 1]
[set]
num-server-rounds = 7
[[group]]
name = "g"
set = { seed = 9, strategy = "median" }
"""
    )
    args = _parser().parse_args(
        ["grid", str(path), "--seeds", "4", "--rounds", "3", "--supernodes", "6"]
    )
    from flwr_byz.experiments.cli import _grid_spec

    spec, out = _grid_spec(args)
    assert out == "from-file"
    assert _names(spec) == [
        "faba__sign-flip__b0.3__s4__num-server-rounds=3__supernodes=6",
        "median__sign-flip__b0.3__s4__num-server-rounds=3__supernodes=6",
    ]
    args = _parser().parse_args(["grid", str(path), "--out", "elsewhere"])
    assert _grid_spec(args)[1] == "elsewhere"
    # Without a file: the classic defaults.
    spec, out = _grid_spec(_parser().parse_args(["grid"]))
    assert out == "results/grid"
    assert _names(spec) == [
        "faba__none__b0.0__s0",
        "faba__random-fault__b0.3__s0",
        "gaa__none__b0.0__s0",
        "gaa__random-fault__b0.3__s0",
    ]


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = _parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert set(subparsers.choices) == {"grid", "report", "run", "status"}
    for name, sub in subparsers.choices.items():
        helped = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        assert helped, name
        for action in helped:
            assert action.help and action.help.strip(), (name, action.dest)
            assert action.help != argparse.SUPPRESS, (name, action.dest)
    for choice in subparsers._choices_actions:
        assert choice.help and choice.help.strip(), choice.dest


def test_eta_weighs_cells_by_rounds_and_supernodes() -> None:
    now = [0.0]
    progress = GridProgress(clock=lambda: now[0])
    progress.add("small", rounds=10, supernodes=10)  # 100 units
    progress.add("large", rounds=20, supernodes=50)  # 1000 units
    assert progress.eta() is None and progress.eta_text() == ""
    now[0] = 10.0
    assert progress.round_started("small", 6, 10) == 5  # 50 units in 10 s
    assert progress.eta() == pytest.approx(10.0 * 1050 / 50)
    now[0] = 20.0
    progress.finish("small")  # 100 units in 20 s
    assert progress.eta() == pytest.approx(20.0 * 1000 / 100)
    assert progress.eta_text() == ", ETA 3m20s"


def test_progress_counts_gaa_episodes_and_not_what_a_resume_had_done() -> None:
    now = [0.0]
    progress = GridProgress(clock=lambda: now[0])
    progress.add("gaa", rounds=6, supernodes=1)  # 2 episodes of 3 rounds
    for k in (1, 2, 3):
        progress.round_started("gaa", k, 3)
    assert progress.round_started("gaa", 1, 3) == 3  # episode 2, round 1
    assert progress.round_started("gaa", 2, 3) == 4
    progress.add("resumed", rounds=10, supernodes=1, resumed=True)
    progress.round_started("resumed", 8, 10)  # 7 rounds from its checkpoint
    now[0] = 4.0
    assert progress.work_done() == 4  # the 7 resumed rounds are not this grid's
    assert progress.work_left() == 2 + 3
    assert round_started("\x1b[92mINFO \x1b[0m:      [ROUND 7/20]") == (7, 20)
    assert round_started("INFO : Federation: 10 nodes") is None


def test_a_failed_cell_is_reported_in_its_apps_own_words() -> None:
    app_error = (
        "Successfully started run 1\n"
        "\x1b[91mERROR \x1b[0m:     Run interrupted (/x/results.json): fault "
        "injection: stopped after round 2\n"
        "\x1b[91mERROR \x1b[0m:     Simulation raised an exception\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in run\n'
        "flwr_byz.app.results.RunInterruptedError: fault injection: stopped\n"
        "\x1b[91mERROR \x1b[0m:     Exit Code: 700\n"
    )
    assert failure_reason(app_error) == (
        "Run interrupted (/x/results.json): fault injection: stopped after round 2"
    )
    traceback_only = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in run\n'
        "NameError: name 'finite_non_negative' is not defined\n"
        "\x1b[91mERROR \x1b[0m:     Exit Code: 700\n"
        "An unhandled exception occurred when running the simulation.\n"
    )
    assert failure_reason(traceback_only) == (
        "NameError: name 'finite_non_negative' is not defined"
    )
    cli_box = (
        "Using SuperLink: local (127.0.0.1:1)\n"
        "╭─ Error ───╮\n"
        "│ [Errno 2] No such file or directory: 'x.py' │\n"
        "╰───────────╯\n"
    )
    assert failure_reason(cli_box) == "[Errno 2] No such file or directory: 'x.py'"
    assert failure_reason("") == "empty log"


def test_jobs_share_the_cpus_and_bound_each_simulation(monkeypatch) -> None:
    monkeypatch.setattr(grid_runner, "available_cpus", lambda: 16)
    assert grid_runner.default_jobs() == 8
    assert grid_runner.cpus_per_cell(8) == 2
    assert grid_runner.cpus_per_cell(3) == 5
    assert grid_runner.cpus_per_cell(1) == 16
    monkeypatch.setattr(grid_runner, "available_cpus", lambda: 1)
    assert grid_runner.default_jobs() == 1
    assert grid_runner.cpus_per_cell(1) == 2  # one ClientApp actor needs 2
    link = LocalSuperLink.__new__(LocalSuperLink)
    command = link.run_command(
        ".", {"seed": 1}, num_supernodes=4, federation_config={"init-args-num-cpus": 2}
    )
    at = command.index("--federation-config")
    assert command[at + 1] == "num-supernodes=4 init-args-num-cpus=2"
    with pytest.raises(SystemExit) as exit_:
        main(["grid", "--jobs", "0", "--dry-run"])
    assert exit_.value.code == 2
