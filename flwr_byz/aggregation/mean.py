"""Plain (optionally weighted) mean of the rows, and the row-combination helper."""

from __future__ import annotations

import math

import torch

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.rule import Rule
from flwr_byz.aggregation.validation import check_updates, check_weights, normalised


def combine_rows(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``Σ_i coeffs[i] · x[i]`` in ``x``'s dtype and device: one read of the matrix.

    A single non-zero coefficient of 1 returns a copy of that row (no arithmetic).
    ``coeffs`` are non-negative and sum to one, so every exact result lies within
    the rows' range; where rounding pushes a coordinate of rows near the dtype's
    largest value past it, the rows are combined again in float64 (or, for float64
    rows, halved first) and the result clamped to that range: never ``inf``.
    """
    nonzero = torch.nonzero(coeffs).flatten().tolist()
    if len(nonzero) == 1 and float(coeffs[nonzero[0]]) == 1.0:
        return x[nonzero[0]].clone()
    out = coeffs.to(device=x.device, dtype=x.dtype) @ x
    # A finite sum proves every value finite (one cheap reduction, no mask, no
    # copy); only when it is not are the values read again.
    if math.isfinite(float(out.sum())) or bool(torch.isfinite(out).all()):
        return out
    rows = x[nonzero]
    c = coeffs[nonzero].to(device=x.device, dtype=torch.float64)
    top = torch.finfo(x.dtype).max
    if x.dtype == torch.float64:
        half = (c @ (rows / 2)).clamp(min=-top / 2, max=top / 2)
        return half * 2
    return (c @ rows.to(torch.float64)).clamp(min=-top, max=top).to(x.dtype)


def mean(x: torch.Tensor, weights: torch.Tensor | None = None) -> AggregationResult:
    """Average of the rows (FedAvg); no robustness.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates.
    weights : torch.Tensor, optional
        ``(n,)`` non-negative weights (e.g. opted-in ``num-examples``); uniform if None.

    Returns
    -------
    AggregationResult
        ``selected``: rows with a positive weight; ``weights``: normalised weights.
    """
    n, _ = check_updates(x, "mean")
    w = check_weights(weights, n, "mean")
    coeffs = torch.full((n,), 1.0 / n, dtype=torch.float64) if w is None else w
    coeffs = normalised(coeffs, "mean", "selected")
    selected = tuple(i for i in range(n) if float(coeffs[i]) > 0.0)
    return AggregationResult(
        aggregate=combine_rows(x, coeffs),
        selected=selected,
        weights=tuple(coeffs.tolist()),
    )


def select_row(
    x: torch.Tensor, best: int, scores: tuple[float, ...] = ()
) -> AggregationResult:
    """The result of a rule that returns one row of ``x`` (Krum, the medoid)."""
    n = x.shape[0]
    coeffs = torch.zeros(n, dtype=torch.float64)
    coeffs[best] = 1.0
    return AggregationResult(
        aggregate=combine_rows(x, coeffs),
        selected=(best,),
        removed=tuple(i for i in range(n) if i != best),
        scores=scores,
        weights=tuple(coeffs.tolist()),
    )


RULE = Rule("mean", "1", mean, supports_weights=True)
