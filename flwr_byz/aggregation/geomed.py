"""Geometric-median rules: the medoid (FABA paper's GeoMed) and smoothed Weiszfeld."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.bounds import require_rows
from flwr_byz.aggregation.distances import centred_gram, sq_distances_from_gram
from flwr_byz.aggregation.mean import combine_rows, select_row
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.validation import (
    check_f,
    check_updates,
    check_weights,
    normalised,
)


def geomed_medoid(x: torch.Tensor, f: int = 0) -> AggregationResult:
    """The medoid: the row minimising the sum of L2 distances to all rows.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 1``.
    f : int
        Number of Byzantine rows to tolerate (only checked against ``n``).

    Returns
    -------
    AggregationResult
        ``aggregate`` a copy of the medoid row; ``selected`` that row; ``removed`` the
        others ascending; ``scores`` each row's sum of distances.
    """
    n, _ = check_updates(x, "geomed")
    f = check_f(f, "geomed")
    require_rows("geomed", n, f)
    sums = sq_distances_from_gram(centred_gram(x).cpu()).sqrt().sum(dim=1).tolist()
    best = min(range(n), key=lambda i: (sums[i], i))
    return select_row(x, best, tuple(sums))


def geometric_median(
    x: torch.Tensor,
    f: int = 0,
    weights: torch.Tensor | None = None,
    eps: float = 1e-8,
    max_iter: int = 100,
    tol: float = 1e-7,
) -> AggregationResult:
    """Geometric median ``argmin_z Σ_i a_i ‖x_i − z‖`` by smoothed Weiszfeld.

    Iterates ``z ← Σ_i b_i x_i / Σ_i b_i`` with ``b_i = a_i / max(eps, ‖x_i − z‖)``
    (Pillutla et al., RFA), starting from the (weighted) mean. ``z`` stays a convex
    combination ``Σ c_i x_i`` of the rows, so every iteration runs on the ``n × n``
    Gram matrix: ``‖x_i − z‖² = G_ii − 2 (G c)_i + cᵀ G c``. The matrix is read twice
    in total (Gram, final combination), whatever the number of iterations.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 1``.
    f : int
        Number of Byzantine rows to tolerate (only checked against ``n``).
    weights : torch.Tensor, optional
        ``(n,)`` non-negative weights ``a``; uniform if None.
    eps : float
        Smoothing: distances below ``eps`` count as ``eps``.
    max_iter : int
        Maximum Weiszfeld iterations.
    tol : float
        Stop when the objective changes by at most ``tol`` times its value.

    Returns
    -------
    AggregationResult
        ``weights`` the coefficients ``c`` of the result; ``scores`` each row's distance
        to it; ``selected`` the rows with a positive coefficient.
    """
    n, _ = check_updates(x, "geometric_median")
    f = check_f(f, "geomed")
    require_rows("geomed", n, f)
    for name, value in (("eps", eps), ("tol", tol)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"geometric_median: {name} must be > 0, got {value!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(
            f"geometric_median: max_iter must be an integer >= 1, got {max_iter!r}"
        )
    w = check_weights(weights, n, "geometric_median")
    a = torch.full((n,), 1.0 / n, dtype=torch.float64) if w is None else w / w.sum()
    gram = centred_gram(x).cpu()
    diag = gram.diagonal()

    def distances(c: torch.Tensor) -> torch.Tensor:
        gc = gram @ c
        return (diag - 2.0 * gc + c @ gc).clamp(min=0.0).sqrt()

    c = a.clone()
    dist = distances(c)
    objective = float(a @ dist)
    for _ in range(max_iter):
        b = a / dist.clamp(min=eps)
        c = b / b.sum()
        dist = distances(c)
        previous, objective = objective, float(a @ dist)
        if abs(previous - objective) <= tol * objective:
            break
    c = normalised(c, "geometric_median", "selected")
    return AggregationResult(
        aggregate=combine_rows(x, c),
        selected=tuple(i for i in range(n) if float(c[i]) > 0.0),
        scores=tuple(dist.tolist()),
        weights=tuple(c.tolist()),
    )
