"""Plots of a finished grid: global accuracy per round, one panel per attack."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def plot_accuracy(runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per (attack, Byzantine fraction): accuracy vs round per strategy.

    Seeds of one strategy are averaged. Needs matplotlib (the ``plots`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "plots need matplotlib: pip install 'flwr-byz[plots]'"
        ) from err

    panels: dict[tuple[str, float], dict[str, list[list[float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in runs:
        cfg = run["config"]
        curve = [
            float("nan") if e.get("accuracy") is None else e["accuracy"]
            for e in run["rounds"]
        ]
        panels[(cfg["attack"], float(cfg["byzantine-fraction"]))][
            cfg["strategy"]
        ].append(curve)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (attack, fraction), by_strategy in sorted(panels.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for strategy, curves in sorted(by_strategy.items()):
            length = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
            ax.plot(range(length), [100 * v for v in mean], label=strategy)
        ax.set_xlabel("round")
        ax.set_ylabel("global test accuracy (%)")
        ax.set_title(f"attack: {attack}, Byzantine fraction {fraction}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / f"accuracy__{attack}__b{fraction}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
