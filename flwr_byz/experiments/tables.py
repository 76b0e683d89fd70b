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


def _ranked_suspects(run: dict[str, Any]) -> tuple[str, list[int]] | None:
    """The detector of a run and its node ids, most suspect first, from the last
    round that has what it needs; None for a run without one.

    GAA+ (the GAA paper's Proc. 2): the lowest final credits first. GeoMed+ (its
    Proc. 1) for ``geomed`` runs: the largest final-round scores first (each
    node's sum of distances to the others for the medoid, its distance to the
    geometric median for Weiszfeld). Proc. 1 recomputes the sums after removing
    each node; ``results.json`` keeps only one round's scores, so this is the
    one-shot ranking, the same as Proc. 1 whenever the K farthest stay the
    farthest once the others are removed.
    """
    credited = [e for e in run["rounds"] if "credits" in e]
    if credited:
        last = credited[-1]
        ids = [int(n) for n in last["credit-node-ids"]]
        return "GAA+", [n for _, n in sorted(zip(last["credits"], ids, strict=True))]
    if run["config"]["strategy"] == "geomed":
        scored = [
            e
            for e in run["rounds"]
            if e.get("scores") and len(e["scores"]) == len(e.get("node-ids", []))
        ]
        if scored:
            last = scored[-1]
            ids = [int(n) for n in last["node-ids"]]
            pairs = sorted(zip(last["scores"], ids, strict=True), key=lambda p: -p[0])
            return "GeoMed+", [n for _, n in pairs]
    return None


def detection_per_k(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Precision/recall of the K most suspect nodes (the GAA paper's Table 4):
    GAA+ (the K lowest final credits) and GeoMed+ (the K largest final GeoMed
    scores, see :func:`_ranked_suspects`).

    K = 1, ⌈f/3⌉ and f, where f is the true number of Byzantine nodes; one row
    per (detector, attack, fraction, settings), mean ± std over seeds. Runs of
    other rules, and runs without attackers, are left out.
    """
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        ranked = _ranked_suspects(run)
        byzantine = {int(n) for n in run["ground-truth"]["byzantine-node-ids"]}
        if ranked is None or not byzantine:
            continue
        detector, order = ranked
        cfg = run["config"]
        f = len(byzantine)
        scores = {}
        for name, k in (("1", 1), ("f/3", -(-f // 3)), ("f", f)):
            hit = len(set(order[:k]) & byzantine)
            scores[f"P@{name}"] = hit / k
            scores[f"R@{name}"] = hit / f
        key = (detector, cfg["attack"], float(cfg["byzantine-fraction"]))
        groups[(*key, settings_text(run))].append(scores)
    rows = []
    for (detector, attack, fraction, settings), group in sorted(groups.items()):
        row: dict[str, Any] = {
            "detector": detector,
            "attack": attack,
            "byzantine-fraction": fraction,
            "settings": settings,
            "seeds": len(group),
        }
        for key in group[0]:
            row[key] = _mean_std([g[key] for g in group])
        rows.append(row)
    return rows


def checkpoint_rounds(last: int) -> list[int]:
    """Rounds to show a learning curve at: 1, 2 and each quarter of ``last``
    (20 rounds: 1, 2, 5, 10, 15, 20)."""
    picks = {1, 2} | {round(last * q / 4) for q in (1, 2, 3, 4)}
    return sorted(r for r in picks if 1 <= r <= last)


def accuracy_by_round(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Test accuracy at :func:`checkpoint_rounds` of the grid's longest run (the
    FABA paper's Table 1, accuracy per epoch): one row per (strategy, attack,
    fraction, settings), the mean over its seeds in %, "–" where no seed reached
    that round. With several GAA episodes, the last episode's rounds."""
    groups: dict[tuple[str, str, float, str], list[dict[int, float]]] = defaultdict(
        list
    )
    last = 0
    for run in runs:
        cfg = run["config"]
        # Episodes follow each other in ``rounds``: a later episode's round
        # overwrites the same round of an earlier one.
        curve = {
            int(e["round"]): e["accuracy"]
            for e in run["rounds"]
            if e.get("accuracy") is not None
        }
        last = max([last, *curve])
        key = (cfg["strategy"], cfg["attack"], float(cfg["byzantine-fraction"]))
        groups[(*key, settings_text(run))].append(curve)
    rows = []
    for (strategy, attack, fraction, settings), curves in sorted(groups.items()):
        row: dict[str, Any] = {
            "strategy": strategy,
            "attack": attack,
            "byzantine-fraction": fraction,
            "settings": settings,
            "seeds": len(curves),
        }
        for r in checkpoint_rounds(last):
            values = [c[r] for c in curves if r in c]
            row[f"round {r}"] = (
                f"{100 * statistics.mean(values):.1f}" if values else "–"
            )
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
        text += "\nDetection per K (precision P, recall R, %):\n\n"
        text += markdown_table(per_k)
    by_round = accuracy_by_round(runs)
    if by_round:
        text += "\nAccuracy by round (%, mean over seeds):\n\n"
        text += markdown_table(by_round)
    md.write_text(text)
    with (out_dir / "summary.csv").open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return md
