"""Grid files: a grid of experiments written down in TOML.

.. code-block:: toml

    out = "results/fig5"            # where the cells go (the --out flag wins)

    [axes]                          # every key with a list: the product of them
    strategy = ["gaa", "faba", "fedavg"]
    attack = ["random-fault", "sign-flip"]
    byzantine-fraction = [0.3, 0.7]
    seed = [0, 1, 2]
    supernodes = [10, 20]           # the federation size can be an axis too

    [set]                           # one value for every cell
    num-server-rounds = 20

    [[group]]                       # more cells: the base with these changes
    name = "bulyan"
    axes = { strategy = ["bulyan"], byzantine-fraction = [0.1] }
    set = { supernodes = 20 }

Keys are the app's run-config keys and ``supernodes`` (simulated SuperNodes per
cell, 10 by default); every other key is refused, naming the nearest valid one.
A group's cells are the product of the base axes overridden by the group's axes,
with the group's values merged over the base's (a key a group sets is no longer
an axis in it). Without ``[axes]`` a file with groups runs only the groups.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr_byz.experiments.grid import GridGroup, GridSpec, grid_keys

_TOP = ("out", "axes", "set", "group")
_GROUP = ("name", "axes", "set")


class GridFileError(ValueError):
    """A grid file that cannot be read as a grid; the message says where."""


@dataclass(frozen=True)
class GridFile:
    """A grid file's grid and its output directory (None: not given)."""

    spec: GridSpec
    out: str | None = None


def _nearest(key: str, allowed: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.0)
    return f"; did you mean {near[0]!r}?" if near else ""


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise GridFileError(f"{where} must be a table, got {value!r}")
    return value


def _axes(value: Any, where: str) -> dict[str, list[Any]]:
    axes = {}
    for key, values in _table(value, where).items():
        if not isinstance(values, list):
            raise GridFileError(
                f"{where}: {key!r} = {values!r} is one value, not a list: write "
                f"{key} = [{values!r}] or put it under the shared values ('set')"
            )
        axes[key] = values
    return axes


def _settings(value: Any, where: str) -> dict[str, Any]:
    settings = {}
    for key, item in _table(value, where).items():
        if isinstance(item, (list, Mapping)):
            raise GridFileError(
                f"{where}: {key!r} = {item!r} is not one value: a list of values "
                "belongs under the axes ('axes')"
            )
        settings[key] = item
    return settings


def parse_grid(data: Mapping[str, Any], source: str = "grid file") -> GridFile:
    """A grid from a parsed grid file (see the module's docstring).

    Raises
    ------
    GridFileError
        On a misplaced or unknown top-level or group key, a value where a list
        belongs or the other way round, or a group without a unique name.
    """
    for key in data:
        if key in _TOP:
            continue
        if key in grid_keys():
            raise GridFileError(
                f"{source}: {key!r} at the top level: put it under [set] (one value) "
                "or [axes] (a list of values)"
            )
        raise GridFileError(
            f"{source}: unknown top-level key {key!r}{_nearest(key, _TOP)} "
            f"(allowed: {', '.join(_TOP)})"
        )
    out = data.get("out")
    if out is not None and not (isinstance(out, str) and out.strip()):
        raise GridFileError(f"{source}: 'out' must be a directory path, got {out!r}")
    groups = []
    names: set[str] = set()
    raw_groups = data.get("group", [])
    if not isinstance(raw_groups, list):
        raise GridFileError(f"{source}: groups are written [[group]], one per group")
    for number, raw in enumerate(raw_groups, start=1):
        raw = _table(raw, f"{source}: group #{number}")
        for key in raw:
            if key not in _GROUP:
                raise GridFileError(
                    f"{source}: unknown key {key!r} in group #{number}"
                    f"{_nearest(key, _GROUP)} (allowed: {', '.join(_GROUP)})"
                )
        name = raw.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise GridFileError(
                f"{source}: group #{number} needs a name of its own (name = "
                f'"..."), got {name!r}'
            )
        names.add(name)
        where = f"{source}: group {name!r}"
        groups.append(
            GridGroup(
                name,
                _axes(raw.get("axes", {}), f"{where} axes"),
                _settings(raw.get("set", {}), f"{where} set"),
            )
        )
    spec = GridSpec(
        _axes(data.get("axes", {}), f"{source}: [axes]"),
        _settings(data.get("set", {}), f"{source}: [set]"),
        tuple(groups),
    )
    return GridFile(spec, out)


def load_grid_file(path: str | Path) -> GridFile:
    """Read and parse the grid file at ``path`` (TOML).

    Raises
    ------
    GridFileError
        When the file cannot be read or parsed, or is not a grid.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise GridFileError(f"{path}: {err}") from err
    return parse_grid(data, str(path))
