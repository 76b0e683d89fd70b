"""Plots of a finished grid: learning curves per attack, GAA credit traces."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from flwr_byz.experiments.tables import settings_text


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "plots need matplotlib: pip install 'flwr-byz[plots]'"
        ) from err
    return plt


def _integer_rounds(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_accuracy(runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per (attack, Byzantine fraction): accuracy vs round, one line per
    defence (and its settings), the mean over seeds with ±1 std shaded.

    Needs matplotlib (the ``plots`` extra).
    """
    plt = _pyplot()
    panels: dict[tuple[str, float], dict[str, list[list[float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in runs:
        cfg = run["config"]
        curve = [
            float("nan") if e.get("accuracy") is None else 100 * e["accuracy"]
            for e in run["rounds"]
        ]
        label = " ".join(filter(None, (cfg["strategy"], settings_text(run))))
        panels[(cfg["attack"], float(cfg["byzantine-fraction"]))][label].append(curve)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (attack, fraction), by_label in sorted(panels.items()):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, curves in sorted(by_label.items()):
            length = min(len(c) for c in curves)
            xs = list(range(length))
            mean = [statistics.fmean(c[i] for c in curves) for i in xs]
            (line,) = ax.plot(xs, mean, label=f"{label} (n={len(curves)})")
            if len(curves) > 1:
                std = [statistics.stdev(c[i] for c in curves) for i in xs]
                ax.fill_between(
                    xs,
                    [m - s for m, s in zip(mean, std, strict=True)],
                    [m + s for m, s in zip(mean, std, strict=True)],
                    color=line.get_color(),
                    alpha=0.15,
                    linewidth=0,
                )
        _integer_rounds(ax)
        ax.set_xlabel("round (results.json entries; episodes follow each other)")
        ax.set_ylabel("global test accuracy (%)")
        ax.set_title(f"{attack}, Byzantine fraction {fraction}: mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"accuracy__{attack}__b{fraction}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_credits(run: dict[str, Any], path: Path) -> Path | None:
    """GAA's credit per node vs round (the GAA paper's Fig. 8): Byzantine nodes in
    warm colours, honest ones in cool colours, labelled by partition.

    Returns ``None`` for a run without credits (not GAA).
    """
    rounds = [e for e in run["rounds"] if "credits" in e]
    if not rounds:
        return None
    plt = _pyplot()
    truth = run["ground-truth"]
    byzantine = {int(n) for n in truth["byzantine-node-ids"]}
    partition = {int(n): p for n, p in truth["node-partitions"].items()}
    nodes = sorted({int(n) for e in rounds for n in e["credit-node-ids"]})
    warm, cool = plt.get_cmap("autumn"), plt.get_cmap("winter")
    bad = [n for n in nodes if n in byzantine]
    good = [n for n in nodes if n not in byzantine]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for group, cmap, kind in ((bad, warm, "Byzantine"), (good, cool, "honest")):
        for i, node in enumerate(group):
            xs, ys = [], []
            for x, e in enumerate(rounds, start=1):
                ids = [int(n) for n in e["credit-node-ids"]]
                if node in ids:
                    xs.append(x)
                    ys.append(e["credits"][ids.index(node)])
            ax.plot(
                xs,
                ys,
                color=cmap(i / max(len(group) - 1, 1) * 0.8),
                label=f"{kind} p{partition.get(node, '?')}",
                linewidth=1.2,
            )
    _integer_rounds(ax)
    cfg = run["config"]
    ax.set_xlabel("round")
    ax.set_ylabel("credit α (softmax over the nodes seen)")
    ax.set_title(
        f"GAA credits: {cfg['attack']}, β = {cfg['byzantine-fraction']}, "
        f"seed {cfg['seed']}"
    )
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
