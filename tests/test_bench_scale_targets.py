"""bench_scale's targets table: every ratio from the rows of the same run."""

from __future__ import annotations

from benchmarks.bench_scale import targets


def _row(n, d, rule, ours, flower=None, floor=0.5, fedavg=None):
    return {
        "n": n,
        "d": d,
        "rule": rule,
        "ours_s": ours,
        "flower_s": flower,
        "floor_s": floor,
        "fedavg_s": fedavg,
    }


def test_targets_table_ratios():
    rows = [
        _row(50, 20_000, "FedAvg (Flower)", 0.8),
        _row(50, 20_000, "Mean", 0.6, flower=0.9, fedavg=0.8),
        _row(50, 20_000, "Krum", 0.6, flower=1.8),
        _row(50, 20_000, "MultiKrum", 0.7, flower=1.9),
        _row(50, 20_000, "FABA", 0.75),
        _row(50, 20_000, "GeoMed", 1.0),
        _row(10, 1_000_000, "Krum", 2.0, flower=3.0, floor=1.0),
        _row(10, 33_130, "GAA", 9.0),
    ]
    lines = targets(rows).splitlines()
    assert len(lines) == 4  # header, rule, one line per (n, d) but GAA's
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == [
        "50",
        "20,000",
        "0.5000",
        "1.20",
        "1.40",
        "1.50",
        "2.00",
        "3.00×",
        "0.6000",
        "0.9000",  # the FedAvg runs taken in turns with Mean's, as many
        "0.67",
    ]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert (
        cells
        == ["10", "1,000,000", "1.0000", "2.00", "–", "–", "–", "1.50×"] + ["–"] * 3
    )
