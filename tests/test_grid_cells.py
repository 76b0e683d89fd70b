"""The grid's cells: identity and validation before anything runs (fast)."""

from __future__ import annotations

import json

import pytest

from flwr_byz.app.config import app_defaults, strategy_of_option
from flwr_byz.experiments.cli import main
from flwr_byz.experiments.grid import GridSpec, cell_name, check_grid
from flwr_byz.experiments.tables import (
    accuracy_by_round,
    checkpoint_rounds,
    detection_per_k,
    summarise,
)

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
        owner = strategy_of_option(key)
        cell = {**base, key: _other(value)}
        if owner is not None:  # another strategy's option: only its own cells
            assert cell_name(cell) == name, key
            cell["strategy"] = owner
            assert cell_name(cell) != cell_name({**base, "strategy": owner}), key
            continue
        changed = cell_name(cell)
        assert changed != name, key
        assert changed not in seen, key
        seen.add(changed)
    assert {strategy_of_option(k) for k in app_defaults()} >= {"gaa", "zeno", None}
    assert cell_name({**base, "output-dir": "elsewhere"}) == name


def test_long_or_odd_values_get_a_digest_name() -> None:
    cell = {**AXES, "data-path": "/very/long/" + "x" * 300 + ".parquet"}
    name = cell_name(cell)
    assert name.startswith("faba__sign-flip__b0.3__s0__cfg-") and len(name) < 80
    assert cell_name({**cell, "data-path": cell["data-path"] + "2"}) != name


def test_a_cell_the_app_refuses_fails_before_anything_runs(capsys) -> None:
    spec = GridSpec.of(["bulyan"], ["sign-flip"], [0.3], [0], num_supernodes=10)
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


def test_summary_never_averages_runs_that_differ_in_more_than_the_seed() -> None:
    def run(seed: int, acc: float, **extra) -> dict:
        cfg = {**app_defaults(), **AXES, "strategy": "gaa", "seed": seed, **extra}
        summary = {
            "final-accuracy": acc,
            "detection-precision": 1.0,
            "detection-recall": 1.0,
        }
        return {"config": cfg, "summary": summary, "rounds": []}

    rows = summarise(
        [
            run(0, 0.8),
            run(1, 0.6, **{"zeno-rho": 0.1}),  # Zeno's option: same GAA experiment
            run(0, 0.5, **{"gaa-policy-lr": 0.0}),
            run(0, 0.4, **{"attack-pattern": "pretense"}),
        ]
    )
    by_settings = {r["settings"]: r for r in rows}
    assert by_settings[""]["seeds"] == 2
    assert by_settings[""]["final-accuracy"] == "70.0 ± 14.1"
    assert by_settings["gaa-policy-lr=0.0"]["final-accuracy"] == "50.0"
    assert by_settings["attack-pattern=pretense"]["final-accuracy"] == "40.0"


def test_summary_reads_each_row_against_fedavg_without_attack() -> None:
    def run(strategy: str, attack: str, seed: int, acc: float, secs: float) -> dict:
        cfg = {
            **app_defaults(),
            "strategy": strategy,
            "attack": attack,
            "byzantine-fraction": 0.0 if attack == "none" else 0.3,
            "seed": seed,
        }
        rounds = [{"round": 0}] + [{"round": r, "round-time-s": secs} for r in (1, 2)]
        summary = {
            "final-accuracy": acc,
            "detection-precision": 1.0,
            "detection-recall": 1.0,
        }
        return {"config": cfg, "summary": summary, "rounds": rounds}

    rows = summarise(
        [
            run("fedavg", "none", 0, 0.80, 1.0),
            run("fedavg", "none", 1, 0.90, 1.0),
            run("gaa", "sign-flip", 0, 0.78, 1.5),
            run("gaa", "sign-flip", 1, 0.86, 1.1),
        ]
    )
    gaa = next(r for r in rows if r["strategy"] == "gaa")
    assert gaa["vs-no-attack"] == "-3.0"  # mean of -2 and -4 points, seed by seed
    assert gaa["time-vs-fedavg"] == "1.30"
    fedavg = next(r for r in rows if r["strategy"] == "fedavg")
    assert fedavg["vs-no-attack"] == "+0.0" and fedavg["time-vs-fedavg"] == "1.00"


def test_report_writes_tables_curves_and_gaa_credit_traces(tmp_path, capsys) -> None:
    truth = {
        "byzantine-node-ids": [11],
        "byzantine-partition-ids": [1],
        "node-partitions": {"10": 0, "11": 1},
    }
    for seed in (0, 1):
        cfg = {**app_defaults(), "strategy": "gaa", "attack": "sign-flip"}
        cfg.update({"byzantine-fraction": 0.5, "seed": seed})
        rounds = [{"round": 0, "accuracy": 0.5, "round-time-s": 0.1}] + [
            {
                "round": r,
                "accuracy": 0.5 + 0.1 * r,
                "round-time-s": 0.2,
                "credit-node-ids": [10, 11],
                "credits": [0.5 + 0.2 * r, 0.5 - 0.2 * r],
            }
            for r in (1, 2)
        ]
        run = {
            "config": cfg,
            "ground-truth": truth,
            "rounds": rounds,
            "summary": {
                "final-accuracy": 0.7,
                "detection-precision": 1.0,
                "detection-recall": 1.0,
            },
        }
        cell = tmp_path / f"gaa__sign-flip__b0.5__s{seed}"
        cell.mkdir()
        (cell / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path)]) == 0
    plots = tmp_path / "plots"
    for name in (
        "accuracy__sign-flip__b0.5.png",
        "credits__gaa__sign-flip__b0.5__s0.png",
        "credits__gaa__sign-flip__b0.5__s1.png",
    ):
        assert (plots / name).stat().st_size > 1000, name
    summary = (tmp_path / "summary.md").read_text()
    assert "| gaa | sign-flip | 0.5 |" in summary
    # GAA+ per K: node 11 (Byzantine) ends with the lowest credit in both seeds.
    assert (
        "| GAA+ | sign-flip | 0.5 | supernodes=2 | 2 | 100.0 ± 0.0 | 100.0 ± 0.0 |"
        in summary
    )
    # The learning curve as a table: 50 % + 10 points a round, rounds 1 and 2.
    assert "| gaa | sign-flip | 0.5 | supernodes=2 | 2 | 60.0 | 70.0 |" in summary


def _truth(byzantine: list[int], nodes: list[int]) -> dict:
    return {
        "byzantine-node-ids": byzantine,
        "byzantine-partition-ids": [nodes.index(n) for n in byzantine],
        "node-partitions": {str(n): i for i, n in enumerate(nodes)},
    }


def test_detection_per_k_ranks_geomed_nodes_by_their_largest_final_scores() -> None:
    nodes = [10, 11, 12, 13]

    def run(strategy: str, seed: int, last: dict) -> dict:
        cfg = {**app_defaults(), "strategy": strategy, "attack": "random-fault"}
        cfg.update({"byzantine-fraction": 0.5, "seed": seed})
        # An earlier round ranks the other way: only the last round counts.
        first = {"round": 1, "node-ids": nodes, "scores": [9.0, 1.0, 8.0, 2.0]}
        return {
            "config": cfg,
            "ground-truth": _truth([11, 13], nodes),
            "rounds": [{"round": 0}, first, {"round": 2, **last}],
            "summary": {"final-accuracy": 0.5},
        }

    rows = detection_per_k(
        [
            # Node 11 farthest, then 13: the two attackers on top.
            run("geomed", 0, {"node-ids": nodes, "scores": [1.0, 7.0, 2.0, 5.0]}),
            # Node 13 farthest, then honest 12.
            run("geomed", 1, {"node-ids": nodes, "scores": [1.0, 2.0, 6.0, 9.0]}),
            # Scores of other rules are not GeoMed+.
            run("krum", 0, {"node-ids": nodes, "scores": [1.0, 7.0, 2.0, 5.0]}),
            # GAA+: the lowest credits, here the two honest nodes.
            run(
                "gaa",
                0,
                {"credit-node-ids": nodes, "credits": [0.01, 0.4, 0.09, 0.5]},
            ),
        ]
    )
    by_detector = {r["detector"]: r for r in rows}
    assert set(by_detector) == {"GeoMed+", "GAA+"}
    geomed = by_detector["GeoMed+"]
    assert geomed["seeds"] == 2
    assert geomed["P@1"] == "100.0 ± 0.0"
    assert geomed["P@f"] == "75.0 ± 35.4" and geomed["R@f"] == "75.0 ± 35.4"
    assert by_detector["GAA+"]["P@f"] == "0.0"


def test_accuracy_by_round_averages_seeds_at_the_checkpoint_rounds() -> None:
    assert checkpoint_rounds(20) == [1, 2, 5, 10, 15, 20]
    assert checkpoint_rounds(2) == [1, 2]

    def run(seed: int, offset: float, episodes: int = 1) -> dict:
        cfg = {**app_defaults(), "strategy": "faba", "attack": "uniform-noise"}
        cfg.update({"byzantine-fraction": 0.3, "seed": seed})
        rounds = [
            {
                "round": r,
                "episode": ep,
                "accuracy": (0.2 if ep < episodes else offset) + r / 100,
            }
            for ep in range(1, episodes + 1)
            for r in range(0, 21)
        ]
        return {"config": cfg, "rounds": rounds, "summary": {"final-accuracy": 0.5}}

    rows = accuracy_by_round([run(0, 0.5), run(1, 0.7), run(2, 0.6, episodes=2)])
    assert len(rows) == 1
    row = rows[0]
    assert row["seeds"] == 3
    # Seeds 0, 1 and seed 2's last episode: 0.5, 0.7, 0.6 + r/100.
    assert [row[f"round {r}"] for r in (1, 5, 20)] == ["61.0", "65.0", "80.0"]
