"""The Byzantine budget ``f`` of a fraction of rows.

Each rule's bound (how many rows it needs for ``f``) is part of its entry
(:class:`~flwr_byz.aggregation.rule.Rule`); by name:
:func:`~flwr_byz.aggregation.registry.min_nodes`.
"""

from __future__ import annotations

import math

from flwr_byz.validation import integer, number, require


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
    require("alpha", alpha, number(0.0, 1.0), owner="byzantine_budget")
    require("n", n, integer(0), owner="byzantine_budget")
    product = alpha * n
    nearest = round(product)
    if abs(product - nearest) <= 1e-9 * max(1.0, product):
        return int(nearest)
    return math.floor(product)
