"""Tables of a finished grid: final accuracy and detection per cell, over seeds."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr_byz.app.config import non_default_settings
from flwr_byz.experiments.grid import DEFAULT_SUPERNODES, SUPERNODES


def load_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every finished ``results.json`` among ``paths``."""
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data.get("summary") is not None:
            runs.append(data)
    return runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


_NOT_SETTINGS = (
    "strategy",
    "attack",
    "byzantine-fraction",
    "seed",
    # Where results go, which run was resumed, fault injection: not an experiment.
    "output-dir",
    "resume",
    "fault-stop-after-round",
)


def federation_size(run: dict[str, Any]) -> int | None:
    """Partitions the run's nodes held (its SuperNodes in a simulation), from its
    ground truth; None where it has none."""
    partitions = run.get("ground-truth", {}).get("node-partitions") or {}
    return len(set(partitions.values())) or None


def settings_text(run: dict[str, Any]) -> str:
    """What else a run changed from the defaults (its own strategy's options only),
    with ``supernodes=N`` when its federation was not the grid's default size."""
    settings = non_default_settings(run["config"], skip=_NOT_SETTINGS)
    size = federation_size(run)
    if size is not None and size != DEFAULT_SUPERNODES:
        settings[SUPERNODES] = size
    return " ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _mean_round_time(runs: list[dict[str, Any]]) -> float | None:
    times = [e["round-time-s"] for r in runs for e in r["rounds"][1:] if e["round"]]
    return statistics.mean(times) if times else None


def _reference(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid's FedAvg runs without attack (the peer every row is read against)."""
    return [
        r
        for r in runs
        if r["config"]["strategy"] == "fedavg" and r["config"]["attack"] == "none"
    ]


def _peer(run: dict[str, Any]) -> tuple[Any, int | None]:
    return run["config"]["seed"], federation_size(run)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, attack, byzantine fraction, settings), over seeds.

    ``settings`` is every other run-config value that differs from the defaults
    (an attack pattern, ``gaa-policy-lr=0``, ...), so runs that differ in anything
    but the seed are never averaged together. When the grid has FedAvg without
    attack, ``vs-no-attack`` is each row's mean accuracy minus FedAvg's (in
    points, seed by seed, on a federation of the same size) and
    ``time-vs-fedavg`` its mean round time divided by FedAvg's on a federation of
    the same size, measured in the same grid.
    """
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        cfg = run["config"]
        key = (
            cfg["strategy"],
            cfg["attack"],
            float(cfg["byzantine-fraction"]),
            settings_text(run),
        )
        groups[key].append(run)
    # Read against FedAvg of the same seed on a federation of the same size.
    reference = {_peer(r): r for r in _reference(runs)}
    rows = []
    for (strategy, attack, fraction, settings), group in sorted(groups.items()):
        summaries = [r["summary"] for r in group]
        accs = [
            s["final-accuracy"] for s in summaries if s["final-accuracy"] is not None
        ]
        own_time = _mean_round_time(group)
        size = federation_size(group[0])  # part of the settings: one per row
        reference_time = _mean_round_time(
            [r for (_, n), r in reference.items() if n == size]
        )
        gaps = [
            r["summary"]["final-accuracy"]
            - reference[_peer(r)]["summary"]["final-accuracy"]
            for r in group
            if _peer(r) in reference
            and r["summary"]["final-accuracy"] is not None
            and reference[_peer(r)]["summary"]["final-accuracy"] is not None
        ]
        rows.append(
            {
                "strategy": strategy,
                "attack": attack,
                "byzantine-fraction": fraction,
                "settings": settings,
                "seeds": len(group),
                "final-accuracy": _mean_std(accs),
                "vs-no-attack": f"{100 * statistics.mean(gaps):+.1f}" if gaps else "–",
                "detection-precision": _mean_std(
                    [s["detection-precision"] for s in summaries]
                ),
                "detection-recall": _mean_std(
                    [s["detection-recall"] for s in summaries]
                ),
                "mean-round-time-s": None if own_time is None else round(own_time, 3),
                "time-vs-fedavg": (
                    f"{own_time / reference_time:.2f}"
                    if own_time is not None and reference_time
                    else "–"
                ),
            }
        )
    return rows


def detection_per_k(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GAA+ precision/recall of the K lowest final credits (the GAA paper's Table 4).

    K = 1, ⌈f/3⌉ and f, where f is the true number of Byzantine nodes; one row
    per (attack, fraction, settings), mean ± std over seeds. Runs without credits
    (other rules) are left out.
    """
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        credited = [e for e in run["rounds"] if "credits" in e]
        byzantine = {int(n) for n in run["ground-truth"]["byzantine-node-ids"]}
        if not credited or not byzantine:
            continue
        cfg = run["config"]
        last = credited[-1]
        order = sorted(
            zip(last["credits"], [int(n) for n in last["credit-node-ids"]], strict=True)
        )
        f = len(byzantine)
        scores = {}
        for name, k in (("1", 1), ("f/3", -(-f // 3)), ("f", f)):
            hit = len({n for _, n in order[:k]} & byzantine)
            scores[f"P@{name}"] = hit / k
            scores[f"R@{name}"] = hit / f
        groups[
            (cfg["attack"], float(cfg["byzantine-fraction"]), settings_text(run))
        ].append(scores)
    rows = []
    for (attack, fraction, settings), group in sorted(groups.items()):
        row: dict[str, Any] = {
            "attack": attack,
            "byzantine-fraction": fraction,
            "settings": settings,
            "seeds": len(group),
        }
        for key in group[0]:
            row[key] = _mean_std([g[key] for g in group])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table (accuracy and detection in %)."""
    if not rows:
        return "(no finished runs)\n"
    headers = list(rows[0])
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(runs: list[dict[str, Any]], out_dir: Path) -> Path:
    """Write ``summary.md`` and ``summary.csv`` into ``out_dir``; return the .md."""
    import csv

    rows = summarise(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "summary.md"
    text = markdown_table(rows)
    per_k = detection_per_k(runs)
    if per_k:
        text += "\nGAA+ detection per K (precision P, recall R, %):\n\n"
        text += markdown_table(per_k)
    md.write_text(text)
    with (out_dir / "summary.csv").open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return md
