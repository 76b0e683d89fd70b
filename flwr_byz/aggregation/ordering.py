"""NaN-safe, deterministic choices: every decision a rule takes goes through here.

A rule's arithmetic is finite for any finite input (see :mod:`.distances`), but a
decision must not depend on that: a NaN score ranks as the most suspicious value
(never the row a rule keeps, always the first a deleting rule removes), and equal
values are broken by the lowest row index, so the same input gives the same choice
in every process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _as_list(values: torch.Tensor | Sequence[float]) -> list[float]:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).flatten().tolist()
    return [float(v) for v in values]


def ranked_ascending(values: torch.Tensor | Sequence[float]) -> list[int]:
    """Row indices from the lowest value to the highest; NaN last, ties by index."""
    vals = _as_list(values)
    return sorted(
        range(len(vals)),
        key=lambda i: (math.isnan(vals[i]), 0.0 if math.isnan(vals[i]) else vals[i], i),
    )


def argmin_lowest(values: torch.Tensor | Sequence[float]) -> int:
    """Index of the smallest value (NaN counts as largest); ties: lowest index."""
    return ranked_ascending(values)[0]


def argmax_lowest(
    values: torch.Tensor | Sequence[float], allowed: Sequence[bool] | None = None
) -> int:
    """Index of the largest value among ``allowed`` rows; NaN counts as largest;
    ties: lowest index."""
    vals = _as_list(values)
    best, best_key = -1, None
    for i, v in enumerate(vals):
        if allowed is not None and not allowed[i]:
            continue
        key = (math.isnan(v), math.inf if math.isnan(v) else v)
        if best_key is None or key > best_key:
            best, best_key = i, key
    if best < 0:
        raise ValueError("argmax_lowest: no row is allowed")
    return best


def argmax_lowest_allowed(values: torch.Tensor, allowed: torch.Tensor) -> int:
    """:func:`argmax_lowest` of a 1-D float tensor among the rows where the bool
    tensor ``allowed`` holds, in tensor operations (for a rule's inner loop)."""
    candidates = torch.where(allowed, values, -math.inf)
    nan = torch.isnan(candidates)
    if bool(nan.any()):
        return int(torch.nonzero(nan)[0])
    if not bool(allowed.any()):
        raise ValueError("argmax_lowest: no row is allowed")
    # torch.argmax returns the first of equal maxima: the lowest index.
    best = int(torch.argmax(candidates))
    if not bool(allowed[best]):  # every allowed value is -inf
        best = int(torch.nonzero(allowed)[0])
    return best
