"""Geometric-median rules: the medoid (FABA paper's GeoMed) and smoothed Weiszfeld."""

from __future__ import annotations

import math

import torch

from flwr_byz.aggregation.distances import (
    decision_scaling,
    medoid,
    scaled_centred_gram,
    scaled_cross_sq_distances,
    sq_distances_from_gram,
)
from flwr_byz.aggregation.mean import combine_rows, select_row
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.aggregation.rule import Param, Rule
from flwr_byz.aggregation.sketch import CountSketch
from flwr_byz.aggregation.validation import (
    check_weights,
    normalised,
)
from flwr_byz.validation import integer, number, one_of, require

# Smallest positive normal float64: the smoothing floor when most rows sit at z.
_SMALLEST = 2.2250738585072014e-308


def geomed_medoid(
    x: torch.Tensor, f: int = 0, *, sketch: CountSketch | None = None
) -> AggregationResult:
    """The medoid: the row minimising the sum of L2 distances to all rows.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 1``.
    f : int
        Number of Byzantine rows to tolerate (only checked against ``n``).
    sketch : CountSketch, optional
        Decide on count-sketched distances (opt-in, approximate; see
        :mod:`flwr_byz.aggregation.sketch`); default exact.

    Returns
    -------
    AggregationResult
        ``aggregate`` a copy of the medoid row; ``selected`` that row; ``removed`` the
        others ascending; ``scores`` each row's sum of distances.
    """
    n = RULE.check_input(x, f)
    gram, scale = scaled_centred_gram(x, sketch=sketch)
    gram = gram.cpu()
    dist = sq_distances_from_gram(gram).sqrt()
    sums = dist.sum(dim=1)
    best = medoid(gram, dist)
    if sketch is not None and sketch.applies_to(*x.shape):
        # Decide exactly among the rows the sketch short-listed.
        ranked = [best, *sorted(set(range(n)) - {best}, key=lambda i: float(sums[i]))]
        rows = sketch.shortlist(sums.tolist(), ranked)
        if len(rows) > 1:
            cross, _ = scaled_cross_sq_distances(x, rows)
            exact = cross.sqrt().sum(dim=1).tolist()
            best = min(zip(exact, rows, strict=True))[1]
    return select_row(x, best, tuple((sums * scale).tolist()))


def geometric_median(
    x: torch.Tensor,
    f: int = 0,
    weights: torch.Tensor | None = None,
    eps: float = 1e-8,
    max_iter: int = 1000,
    tol: float = 1e-7,
    *,
    sketch: CountSketch | None = None,
) -> AggregationResult:
    """Geometric median ``argmin_z Σ_i a_i ‖x_i − z‖`` by smoothed Weiszfeld.

    Iterates ``z ← Σ_i b_i x_i / Σ_i b_i`` with ``b_i = a_i / max(ν, ‖x_i − z‖)``
    (Pillutla et al., RFA), starting from the mean of the majority of rows nearest
    the medoid. ``z`` stays a convex
    combination ``Σ c_i x_i`` of the rows, so every iteration runs on the ``n × n``
    Gram matrix: ``‖x_i − z‖² = G_ii − 2 (G c)_i + cᵀ G c``. The matrix is read twice
    in total (Gram, final combination), whatever the number of iterations.

    Every threshold is relative to ``s``, the median distance of the rows to ``z``,
    which the majority of rows sets: the smoothing is ``ν = eps · s`` and the
    iteration stops once a step moves ``z`` by at most ``tol · s``. So the answer
    does not depend on the units of ``x``, nor on how far away a minority of rows
    is: a far row's pull is a unit vector whatever its distance, and the stopping
    rule does not end early because one huge distance dominates the objective.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 1``.
    f : int
        Number of Byzantine rows to tolerate (only checked against ``n``).
    weights : torch.Tensor, optional
        ``(n,)`` non-negative weights ``a``; uniform if None.
    eps : float
        Smoothing, relative to ``s``: distances below ``eps · s`` count as that.
    max_iter : int
        Maximum Weiszfeld iterations.
    tol : float
        Stop when a step moves ``z`` by at most ``tol · s``.
    sketch : CountSketch, optional
        Decide on count-sketched distances (opt-in, approximate; see
        :mod:`flwr_byz.aggregation.sketch`); default exact.

    Returns
    -------
    AggregationResult
        ``weights`` the coefficients ``c`` of the result (they sum to one, except
        for float64 rows shrunk by
        :func:`~flwr_byz.aggregation.distances.decision_scaling`, whose coefficient
        carries the shrink); ``scores`` each row's distance to it; ``selected`` the
        rows with a positive coefficient.
    """
    n = RULE.check_input(x, f, "geometric_median")
    for name, value in (("eps", eps), ("tol", tol)):
        require(name, value, number(0.0, low_open=True), owner="geometric_median")
    require("max_iter", max_iter, integer(1), owner="geometric_median")
    w = check_weights(weights, n, "geometric_median")
    a = torch.full((n,), 1.0 / n, dtype=torch.float64) if w is None else w / w.sum()
    gram, scale = scaled_centred_gram(x, sketch=sketch)
    gram = gram.cpu()
    diag = gram.diagonal()
    counted = a > 0

    def distances(c: torch.Tensor) -> torch.Tensor:
        gc = gram @ c
        return (diag - 2.0 * gc + c @ gc).clamp(min=0.0).sqrt()

    # Start at the mean of the majority of rows nearest the medoid, not at the mean
    # of all: a far row drags the mean arbitrarily far, and Weiszfeld would need
    # ~log(distance) iterations to walk back; nor at the medoid itself, where the
    # smoothed iteration stalls (a row at z outweighs the others 1/eps to one).
    sq = sq_distances_from_gram(gram)
    centre = medoid(gram, sq.sqrt())
    near = sorted(range(n), key=lambda i: (float(sq[centre, i]), i))[: n // 2 + 1]
    c = torch.zeros(n, dtype=torch.float64)
    c[near] = a[near]
    c = c / c.sum() if float(c.sum()) > 0 else a.clone()
    dist = distances(c)
    for _ in range(max_iter):
        spread = float(dist[counted].median())
        nu = max(eps * spread, _SMALLEST)
        at_z = counted & (dist <= nu)
        if bool(at_z.any()):
            # z sits on data rows, where Weiszfeld (smoothed or not) stalls: the
            # rows at z outweigh the others 1/ν to one. Vardi and Zhang's step
            # (PNAS 2000) leaves a data point unless it is the median.
            pull = torch.where(at_z, 0.0, a / dist.clamp(min=nu))
            if float(pull.sum()) == 0.0:
                break  # every counted row is at z
            top = float(pull.max())
            pull = pull / top
            towards = pull / pull.sum()  # T̃: Weiszfeld's point without the rows at z
            gap = towards - c
            r = float(pull.sum()) * math.sqrt(max(float(gap @ (gram @ gap)), 0.0))
            eta = float(a[at_z].sum()) / top
            if r <= eta:
                break  # the data point z is the geometric median
            updated = (1.0 - eta / r) * towards + (eta / r) * c
        else:
            b = a / dist.clamp(min=nu)
            b = b / b.max()  # rows near z get huge weights: keep the sum finite
            updated = b / b.sum()
        step = updated - c
        c = updated
        dist = distances(c)
        moved = math.sqrt(max(float(step @ (gram @ step)), 0.0))
        if moved <= tol * spread:
            break
    c = normalised(c.clamp(min=0.0), "geometric_median", "selected")
    _, shrink = decision_scaling(x)
    if shrink is not None:
        # z is Σ c_i (shrink_i x_i): a shrunk row pulls by its direction only, as
        # a far row does on the true geometric median.
        c = c * shrink
    return AggregationResult(
        aggregate=combine_rows(x, c),
        selected=tuple(i for i in range(n) if float(c[i]) > 0.0),
        scores=tuple((dist * scale).tolist()),
        weights=tuple(c.tolist()),
    )


def _geomed_of_round(
    round_input: RoundInput,
    *,
    sketch: CountSketch | None = None,
    method: str = "medoid",
) -> AggregationResult:
    x, f = round_input.updates, round_input.f
    if method == "medoid":
        return geomed_medoid(x, f, sketch=sketch)
    return geometric_median(x, f, weights=round_input.weights, sketch=sketch)


RULE = Rule(
    "geomed",
    "2f+1",
    geomed_medoid,
    _geomed_of_round,
    uses_f=True,
    uses_distances=True,
    params=(
        Param(
            "method",
            "medoid",
            one_of(("medoid", "weiszfeld")),
            "the medoid (an update) or the smoothed-Weiszfeld geometric median",
            config_key="geomed-method",
        ),
    ),
    description="GeoMed: the medoid (the FABA paper's baseline) or the "
    "smoothed-Weiszfeld geometric median (weighted)",
)
