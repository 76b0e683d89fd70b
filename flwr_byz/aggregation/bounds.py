"""How many rows each rule needs to tolerate ``f`` Byzantine rows."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import Rule


def _rule(rule: str) -> Rule:
    # Imported here: the registry imports the rule modules, which import this one.
    from .registry import RULE_BY_NAME

    if rule not in RULE_BY_NAME:
        raise ValueError(
            f"min_nodes: unknown rule {rule!r}; allowed: "
            f"{', '.join(sorted(RULE_BY_NAME))}"
        )
    return RULE_BY_NAME[rule]


def min_nodes(rule: str, f: int) -> int:
    """Smallest number of rows ``n`` with which ``rule`` tolerates ``f`` Byzantine rows.

    Parameters
    ----------
    rule : str
        A rule of :data:`~flwr_byz.aggregation.registry.REGISTRY` (its ``bound``).
    f : int
        Number of Byzantine rows, >= 0.

    Returns
    -------
    int
        ``1`` for mean and FLTrust, ``f+1`` for Zeno (``b = f``), ``2f+1`` for
        FABA (n > 2f), GeoMed, median, trimmed mean and brute force, ``2f+3`` for
        Krum and MultiKrum, ``4f+3`` for Bulyan.
    """
    entry = _rule(rule)
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"min_nodes: f must be an integer >= 0, got {f!r}")
    return int(entry.bound(f))


def require_rows(rule: str, n: int, f: int) -> None:
    """Raise ``ValueError`` naming n, f and the bound when ``n`` is too small."""
    needed = min_nodes(rule, f)
    if n < needed:
        raise ValueError(
            f"{rule} needs n >= {_rule(rule).bound_text} = {needed} rows to tolerate "
            f"f = {f} Byzantine rows, got n = {n}"
        )


def byzantine_budget(alpha: float, n: int) -> int:
    """``f = floor(alpha · n)``: the Byzantine budget of a fraction.

    As in the FABA paper, where 30 % of 32 workers tolerate 9.

    A product within ``1e-9`` (relative) of an integer counts as that integer, so
    that binary rounding never costs a row: ``0.3 · 10``, ``0.29 · 100`` and
    ``(f / n) · n`` give 3, 29 and ``f``, where a bare ``floor`` gives one less.

    Parameters
    ----------
    alpha : float
        Fraction in ``[0, 1]``.
    n : int
        Number of rows (valid replies, partitions, ...), ``>= 0``.

    Returns
    -------
    int
        The budget, ``0 <= f <= n``.
    """
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not (0.0 <= alpha <= 1.0)
    ):
        raise ValueError(f"byzantine_budget: alpha must be in [0, 1], got {alpha!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"byzantine_budget: n must be an integer >= 0, got {n!r}")
    product = alpha * n
    nearest = round(product)
    if abs(product - nearest) <= 1e-9 * max(1.0, product):
        return int(nearest)
    return math.floor(product)
