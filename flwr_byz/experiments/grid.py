"""The experiment grid: defences × attacks × Byzantine fractions × seeds.

Every cell is one ordinary run of this repository's Flower app through Flower's
simulation engine (``flwr run`` against a private SuperLink), with the cell's
values as run-config overrides; each writes its own ``results.json``. A cell whose
``results.json`` is already complete is skipped, so an interrupted grid resumes; a
cell that was cut short continues from its checkpoint (run-config key ``resume``),
so its result is the one an uninterrupted cell would have had.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr_byz.app.checkpoint import CHECKPOINT_FILE
from flwr_byz.app.config import (
    RunConfigError,
    check_against_nodes,
    check_run_config,
    non_default_settings,
)
from flwr_byz.app.results import RESULTS_FILE
from flwr_byz.experiments.local_superlink import LocalSuperLink


@dataclass(frozen=True)
class GridSpec:
    """What to run: the axes of the grid and the settings shared by every cell."""

    strategies: Sequence[str]
    attacks: Sequence[str]
    byzantine_fractions: Sequence[float]
    seeds: Sequence[int]
    num_supernodes: int = 10
    base_config: Mapping[str, Any] = field(default_factory=dict)

    def cells(self) -> Iterator[dict[str, Any]]:
        """Run-config overrides of every cell, in a fixed order."""
        for strategy, attack, fraction, seed in itertools.product(
            self.strategies, self.attacks, self.byzantine_fractions, self.seeds
        ):
            # "No attack" needs only one fraction: 0.
            if (attack == "none") != (fraction == 0):
                continue
            yield {
                **self.base_config,
                "strategy": strategy,
                "attack": attack,
                "byzantine-fraction": fraction,
                "seed": seed,
            }


_AXES = ("strategy", "attack", "byzantine-fraction", "seed")
# Where results go, resuming and fault injection are not what a cell computes.
_NOT_IDENTITY = frozenset({"output-dir", "resume", "fault-stop-after-round"})
_MAX_NAME = 200


def cell_name(cell: Mapping[str, Any]) -> str:
    """A directory name that identifies a cell: every run-config value it runs with.

    The four axes come first; then, sorted, every other key whose value differs from
    the app's default (``attack-pattern=pretense``, ``num-server-rounds=30``, every
    ``--set``), except another strategy's own options (``zeno-rho`` does not change
    a FABA cell). So changing any value that the cell uses gives another
    directory, and a grid re-run with other settings never reuses a result. A
    name that would be too long for a file system ends in a digest of those
    values instead.
    """
    name = (
        f"{cell['strategy']}__{cell['attack']}__b{cell['byzantine-fraction']}"
        f"__s{cell['seed']}"
    )
    extra = list(non_default_settings(cell, skip=(*_AXES, *_NOT_IDENTITY)).items())
    if not extra:
        return name
    text = "__".join(f"{k}={v}" for k, v in extra)
    safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", text)
    if len(name) + 2 + len(safe) <= _MAX_NAME and safe == text:
        return f"{name}__{safe}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{name}__cfg-{digest}"


def check_grid(spec: GridSpec) -> list[dict[str, Any]]:
    """Validate every cell before running any; return the cells.

    Each cell's run config is checked as the app checks it, including the rule's
    bound against the federation's size (``--supernodes``), so a cell the app
    would refuse fails here with the app's own message, not after others ran.
    """
    cells = list(spec.cells())
    if not cells:
        raise ValueError(
            "the grid is empty: attack 'none' pairs only with byzantine fraction 0, "
            "and every other attack needs a fraction > 0"
        )
    for cell in cells:
        try:
            check_against_nodes(check_run_config(cell), spec.num_supernodes)
        except RunConfigError as err:
            raise ValueError(f"cell {cell_name(cell)}: {err}") from err
    return cells


def run_grid(
    spec: GridSpec, app_dir: str | Path, out_dir: str | Path, echo: bool = True
) -> list[Path]:
    """Run every cell (skipping finished ones); return their ``results.json`` paths."""
    out_dir = Path(out_dir).resolve()
    cells = check_grid(spec)
    paths = []
    todo = sum(not _finished(out_dir / cell_name(c) / "results.json") for c in cells)
    started, ran = time.monotonic(), 0
    with LocalSuperLink() as superlink:
        for number, cell in enumerate(cells, start=1):
            path = out_dir / cell_name(cell) / "results.json"
            paths.append(path)
            if _finished(path):
                continue
            overrides = cell_overrides(cell, path.parent)
            if echo:
                per_cell = (time.monotonic() - started) / max(ran, 1)
                eta = f", ETA {_duration(per_cell * (todo - ran))}" if ran else ""
                again = ", resumed from its checkpoint" if "resume" in overrides else ""
                print(
                    f"[{number}/{len(cells)}] {cell_name(cell)} "
                    f"({ran} of {todo} to run done{eta}{again})",
                    flush=True,
                )
            ran += 1
            completed = superlink.run(
                app_dir, overrides, num_supernodes=spec.num_supernodes
            )
            if completed.returncode != 0 or not _finished(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                (path.parent / "flwr-run.log").write_text(
                    completed.stdout + completed.stderr
                )
                raise RuntimeError(
                    f"cell {cell_name(cell)} failed; log in {path.parent}/flwr-run.log"
                )
    return paths


def cell_overrides(cell: Mapping[str, Any], cell_dir: Path) -> dict[str, Any]:
    """The run config of an unfinished cell: a fresh run into ``cell_dir``, or the
    resume of the run cut short there.

    The app never overwrites a run directory. A cell with a checkpoint resumes
    from it; the ``results.json`` of a cell that stopped before its first
    checkpoint (or was written by a flwr-byz without checkpoints) is kept as
    ``results.<n>.stale.json`` and the cell runs afresh.
    """
    overrides = {**cell, "output-dir": str(cell_dir)}
    if (cell_dir / CHECKPOINT_FILE).exists():
        return {**overrides, "resume": str(cell_dir)}
    stale = cell_dir / RESULTS_FILE
    if stale.exists():
        number = 1
        while (cell_dir / f"results.{number}.stale.json").exists():
            number += 1
        stale.rename(cell_dir / f"results.{number}.stale.json")
    return overrides


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{secs:02d}s"


def _finished(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("summary") is not None
    except json.JSONDecodeError:
        return False
