"""The experiment grid's cells: which runs a grid holds, their names, their checks.

A grid is a product of axes (run-config keys with a list of values each: strategy
× attack × Byzantine fraction × seed, or any other key) with shared values, plus
optional named groups that change some axes or values. Every cell is one ordinary
run of this repository's Flower app (see :mod:`flwr_byz.experiments.grid_runner`)
with the cell's values as run-config overrides, in a folder named by those values.
A cell whose ``results.json`` is already complete is skipped, so an interrupted grid
resumes; a cell that was cut short continues from its checkpoint (run-config key
``resume``), so its result is the one an uninterrupted cell would have had.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr_byz.app.checkpoint import CHECKPOINT_FILE
from flwr_byz.app.config import (
    RunConfigError,
    app_defaults,
    check_against_nodes,
    check_run_config,
    non_default_settings,
)
from flwr_byz.app.results import RESULTS_FILE, played_to_end

#: The grid's own key beside the run-config keys: simulated SuperNodes per cell
#: (Flower's ``num-supernodes``; one per data partition).
SUPERNODES = "supernodes"
DEFAULT_SUPERNODES = 10

_AXES = ("strategy", "attack", "byzantine-fraction", "seed")
# Where results go, resuming and fault injection are not what a cell computes.
_NOT_IDENTITY = frozenset({"output-dir", "resume", "fault-stop-after-round"})
_MAX_NAME = 200


@dataclass(frozen=True)
class GridGroup:
    """Named cells that differ from the grid's base: some axes or values changed.

    Parameters
    ----------
    name : str
        Shown in messages about the group's cells.
    axes : Mapping[str, Sequence[Any]]
        Axes that replace the base's axes of the same key (or add new ones).
    settings : Mapping[str, Any]
        Values merged over the base's shared values; a key set here is no longer
        an axis in this group.
    """

    name: str
    axes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its run-config overrides and its federation size."""

    config: Mapping[str, Any]
    supernodes: int = DEFAULT_SUPERNODES
    group: str = ""

    @property
    def name(self) -> str:
        """The cell's folder name (see :func:`cell_name`)."""
        return cell_name(self.config, self.supernodes)

    @property
    def rounds(self) -> int:
        """Rounds the run plays: ``num-server-rounds`` of every GAA episode."""
        cfg = {**app_defaults(), **self.config}
        return int(cfg["num-server-rounds"]) * int(cfg["gaa-episodes"])

    def describe(self) -> str:
        """The cell's name, with its group when it has one (for messages)."""
        return f"{self.name} (group {self.group!r})" if self.group else self.name


@dataclass(frozen=True)
class GridSpec:
    """What to run: axes and shared values of the base grid, and named groups.

    The base grid's cells are the product of ``axes`` (in key order, the first key
    varying slowest) with ``settings`` shared by all. Each group's cells are the
    product of the base axes overridden by the group's, with the group's values
    merged over the base's (see :func:`layered`). With groups and no base axes,
    only the groups' cells run: the base then only holds shared values. Attack
    'none' pairs only with Byzantine fraction 0 (and every other attack with a
    fraction above 0); cells with the same folder name run once.

    Parameters
    ----------
    axes : Mapping[str, Sequence[Any]]
        Run-config key (or ``supernodes``) → the values it takes.
    settings : Mapping[str, Any]
        Run-config key (or ``supernodes``) → one value for every cell.
    groups : Sequence[GridGroup]
        Further cells, each group a product of its own.
    """

    axes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    groups: Sequence[GridGroup] = ()

    @classmethod
    def of(
        cls,
        strategies: Sequence[str],
        attacks: Sequence[str],
        byzantine_fractions: Sequence[float],
        seeds: Sequence[int],
        num_supernodes: int = DEFAULT_SUPERNODES,
        base_config: Mapping[str, Any] | None = None,
    ) -> GridSpec:
        """The classic grid: strategies × attacks × fractions × seeds."""
        return cls(
            axes={
                "strategy": list(strategies),
                "attack": list(attacks),
                "byzantine-fraction": list(byzantine_fractions),
                "seed": list(seeds),
            },
            settings={**(base_config or {}), SUPERNODES: num_supernodes},
        )

    def overridden(
        self, axes: Mapping[str, Sequence[Any]], settings: Mapping[str, Any]
    ) -> GridSpec:
        """This grid with ``axes`` and ``settings`` winning in the base and in every
        group (the command line's flags over a grid file)."""
        base_axes, base_settings = layered(self.axes, self.settings, axes, settings)
        if not self.axes and self.groups:
            # A groups-only grid stays one: the flags change every group instead.
            base_axes = {}
            base_settings = {**self.settings, **settings}
        groups = []
        for group in self.groups:
            group_axes, group_settings = layered(
                group.axes, group.settings, axes, settings
            )
            groups.append(GridGroup(group.name, group_axes, group_settings))
        return GridSpec(base_axes, base_settings, tuple(groups))

    def layers(self) -> Iterator[tuple[str, Mapping[str, Sequence[Any]], dict]]:
        """(group name, axes, settings) of the base grid and of every group."""
        if self.axes or not self.groups:
            yield "", self.axes, dict(self.settings)
        for group in self.groups:
            axes, settings = layered(
                self.axes, self.settings, group.axes, group.settings
            )
            yield group.name, axes, settings

    def cells(self) -> list[Cell]:
        """Every cell, in a fixed order, each folder name once."""
        defaults = app_defaults()
        seen: dict[str, Cell] = {}
        for group, axes, settings in self.layers():
            keys = list(axes)
            for values in itertools.product(*(axes[k] for k in keys)):
                config = {k: defaults[k] for k in _AXES}
                config.update(settings)
                config.update(zip(keys, values, strict=True))
                supernodes = config.pop(SUPERNODES, DEFAULT_SUPERNODES)
                fraction = config["byzantine-fraction"]
                if isinstance(fraction, int) and not isinstance(fraction, bool):
                    # 0 and 0.0 are one fraction: one folder (b0.0), as --fractions.
                    config["byzantine-fraction"] = float(fraction)
                # "No attack" needs only one fraction: 0.
                if (config["attack"] == "none") != (config["byzantine-fraction"] == 0):
                    continue
                cell = Cell(config, supernodes, group)
                seen.setdefault(cell.name, cell)
        return list(seen.values())


def layered(
    axes: Mapping[str, Sequence[Any]],
    settings: Mapping[str, Any],
    over_axes: Mapping[str, Sequence[Any]],
    over_settings: Mapping[str, Any],
) -> tuple[dict[str, Sequence[Any]], dict[str, Any]]:
    """Axes and values with ``over_axes`` / ``over_settings`` on top: a key the top
    layer sets is no longer an axis, and a key it makes an axis is no longer set."""
    merged_axes = {k: v for k, v in axes.items() if k not in over_settings}
    merged_axes.update(over_axes)
    merged_settings = {k: v for k, v in settings.items() if k not in over_axes}
    merged_settings.update(over_settings)
    return merged_axes, merged_settings


def cell_name(cell: Mapping[str, Any], supernodes: int = DEFAULT_SUPERNODES) -> str:
    """A directory name that identifies a cell: every value it runs with.

    The four axes come first; then, sorted, every other key whose value differs from
    the app's default (``attack-pattern=pretense``, ``num-server-rounds=30``, every
    ``--set``) and ``supernodes=N`` when the federation is not the default 10,
    except another strategy's own options (``zeno-rho`` does not change a FABA
    cell). So changing any value that the cell uses gives another directory, and a
    grid re-run with other settings never reuses a result. A name that would be
    too long for a file system ends in a digest of those values instead.
    """
    name = (
        f"{cell['strategy']}__{cell['attack']}__b{cell['byzantine-fraction']}"
        f"__s{cell['seed']}"
    )
    extra = non_default_settings(cell, skip=(*_AXES, *_NOT_IDENTITY))
    if supernodes != DEFAULT_SUPERNODES:
        extra[SUPERNODES] = supernodes
    if not extra:
        return name
    text = "__".join(f"{k}={v}" for k, v in sorted(extra.items()))
    safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", text)
    if len(name) + 2 + len(safe) <= _MAX_NAME and safe == text:
        return f"{name}__{safe}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{name}__cfg-{digest}"


def grid_keys() -> list[str]:
    """Every key a grid may set or vary: the app's run-config keys and
    ``supernodes``."""
    return sorted([*app_defaults(), SUPERNODES])


def unknown_key(key: str, where: str) -> str | None:
    """A message for ``key`` (found in ``where``) when it is not a grid key."""
    known = grid_keys()
    if key in known:
        return None
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return (
        f"unknown key {key!r} in {where}{hint} (run-config keys and "
        f"{SUPERNODES!r} only; see docs/configuration.md)"
    )


def _check_spec(spec: GridSpec) -> None:
    """Keys and axis values, before any cell is built from them."""
    places: list[tuple[str, Iterable[str]]] = [
        ("the grid's axes", spec.axes),
        ("the grid's shared values", spec.settings),
    ]
    for group in spec.groups:
        places += [
            (f"the axes of group {group.name!r}", group.axes),
            (f"the values of group {group.name!r}", group.settings),
        ]
    for where, keys in places:
        for key in keys:
            message = unknown_key(key, where)
            if message is not None:
                raise ValueError(message)
    layers = [("", spec.axes, spec.settings)]
    layers += [(g.name, g.axes, g.settings) for g in spec.groups]
    for name, axes, settings in layers:
        both = sorted(set(axes) & set(settings))
        if both:
            raise ValueError(
                f"{both[0]!r} is both an axis and a shared value"
                f"{f' in group {name!r}' if name else ''}: keep one"
            )
        for key, values in axes.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(
                    f"axis {key!r}{f' of group {name!r}' if name else ''} must be a "
                    f"list of values, got {values!r}"
                )
            if not values:
                raise ValueError(
                    f"axis {key!r}{f' of group {name!r}' if name else ''} has no values"
                )


def check_cell(cell: Cell) -> None:
    """Check one cell as the app would: its run config, the rule's bound for its
    federation size, and that size itself.

    Raises
    ------
    ValueError
        Naming the cell (and its group) and the app's own reason.
    """
    try:
        if (
            isinstance(cell.supernodes, bool)
            or not isinstance(cell.supernodes, int)
            or cell.supernodes < 1
        ):
            raise RunConfigError(
                f"{SUPERNODES!r} = {cell.supernodes!r} is invalid: expected an "
                "integer >= 1 (simulated SuperNodes)"
            )
        check_against_nodes(check_run_config(cell.config), cell.supernodes)
    except RunConfigError as err:
        raise ValueError(f"cell {cell.describe()}: {err}") from err


def check_grid(spec: GridSpec) -> list[Cell]:
    """Validate every cell before running any; return the cells.

    Every key must be a run-config key (or ``supernodes``); each cell's run config
    is checked as the app checks it, including the rule's bound against that
    cell's number of SuperNodes, so a cell the app would refuse fails here with the
    app's own message, not after others ran.

    Raises
    ------
    ValueError
        For the first invalid key or cell (naming it, and how many more cells
        are invalid), or an empty grid.
    """
    _check_spec(spec)
    cells = spec.cells()
    if not cells:
        raise ValueError(
            "the grid is empty: attack 'none' pairs only with byzantine fraction 0, "
            "and every other attack needs a fraction > 0"
        )
    errors = []
    for cell in cells:
        try:
            check_cell(cell)
        except ValueError as err:
            errors.append(str(err))
    if errors:
        more = f" (and {len(errors) - 1} more invalid cells)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more)
    return cells


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


def finished(path: Path) -> bool:
    """Whether ``path`` is a complete ``results.json``: a run that played all its
    rounds (:func:`~flwr_byz.app.results.played_to_end`: ``completed``, or
    ``degraded`` / ``failed`` when its rounds did not update the model — an
    experiment's outcome too); a run stopped for want of nodes keeps a partial
    summary but is ``interrupted``; a file from before statuses counts by its
    summary."""
    if not path.exists():
        return False
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and played_to_end(data)
