"""A copy of a Flower app's directory without the directories it ignores.

``flwr run <dir>`` (Flower 1.42) builds the app's FAB by walking *every* file under
``<dir>``, and only then drops what the app's ``.gitignore`` and Flower's own rules
leave out. A virtual environment inside the checkout (the README's ``.venv``, CI's
``.ci-venv``: some 60,000 files) costs each ``flwr run`` about 6 s of that walk
before it sends anything. :func:`app_snapshot` copies the directory tree without
the directories the root ``.gitignore`` ignores, and those Flower always leaves
out (``.venv``, ``.flwr``, ``__pycache__``), so ``flwr run <snapshot>`` builds the
same FAB in milliseconds. Files are copied whole and unfiltered: Flower applies its
own rules to the snapshot as it would to the original.

One directory more is skipped: git's store, ``.git``, which may hold gigabytes.
Flower would pack a file from it only where its name ends like an app's file
(``.py``, ``.json``, ``.md``...), and git keeps none such there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pathspec

__all__ = ["app_snapshot"]

# Flower's built-in excludes at the root, and git's own store (see above).
_ALWAYS_PRUNED = frozenset({".git", ".venv", ".flwr"})


def _ignored_directories(app_dir: Path) -> pathspec.PathSpec | None:
    """The root ``.gitignore`` as a spec for directories, or ``None`` where one of
    its patterns re-includes (``!``): a directory cannot be skipped whole then."""
    gitignore = app_dir / ".gitignore"
    if not gitignore.is_file():
        return pathspec.GitIgnoreSpec.from_lines([])
    lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    if any(line.strip().startswith("!") for line in lines):
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def app_snapshot(app_dir: str | Path, into: str | Path) -> Path:
    """Copy the Flower app in ``app_dir`` to the new directory ``into``; return it.

    Every regular file is copied but those below a directory that the app's root
    ``.gitignore`` ignores, or named ``.git``, ``.venv``, ``.flwr`` (at the root)
    or ``__pycache__``. Symbolic links are skipped, as Flower's FAB build skips
    them. ``into`` must not exist yet.
    """
    source = Path(app_dir).resolve()
    target = Path(into)
    if not (source / "pyproject.toml").is_file():
        raise ValueError(f"{source} is not a Flower app: it has no pyproject.toml")
    spec = _ignored_directories(source)
    target.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        here = Path(dirpath)
        relative = here.relative_to(source)
        kept = []
        for name in dirnames:
            path = relative / name
            pruned = name == "__pycache__" or (
                relative == Path(".") and name in _ALWAYS_PRUNED
            )
            if spec is not None and spec.match_file(f"{path.as_posix()}/"):
                pruned = True
            if not pruned and not (here / name).is_symlink():
                kept.append(name)
                (target / path).mkdir()
        dirnames[:] = kept
        for name in filenames:
            if not (here / name).is_symlink():
                shutil.copy2(here / name, target / relative / name)
    return target
