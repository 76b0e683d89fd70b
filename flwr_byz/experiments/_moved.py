"""Module paths of :mod:`flwr_byz.experiments` that moved, kept for one release."""

from __future__ import annotations

import importlib
import sys
import warnings


def moved(old: str, new: str, name: str) -> None:
    """Warn (``FutureWarning``, on stderr) that module ``old`` is ``new``; where
    ``old`` runs as ``python -m old`` (``name == "__main__"``), run ``new``'s
    ``main`` and exit with its code."""
    command = name == "__main__"
    how = f"python -m {new}" if command else new
    warnings.warn(f"{old} is deprecated; use {how}", FutureWarning, stacklevel=3)
    if command:
        sys.exit(importlib.import_module(new).main())
