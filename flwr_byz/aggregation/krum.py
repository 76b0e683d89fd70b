"""Krum and MultiKrum (Blanchard et al., NeurIPS 2017)."""

from __future__ import annotations

import math

import numpy as np
import torch

from flwr_byz.aggregation.distances import (
    scaled_cross_sq_distances,
    scaled_pairwise_sq_distances,
)
from flwr_byz.aggregation.mean import combine_rows, select_row
from flwr_byz.aggregation.ordering import ranked_ascending
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.aggregation.rule import Param, Rule
from flwr_byz.aggregation.sketch import CountSketch
from flwr_byz.aggregation.validation import (
    check_weights,
    normalised,
)
from flwr_byz.validation import integer, require


def krum_scores(sq_dist: torch.Tensor, f: int) -> list[float]:
    """Krum score of each row: sum of squared distances to its ``n − f − 2`` nearest.

    Parameters
    ----------
    sq_dist : torch.Tensor
        ``(n, n)`` squared distances (zero diagonal), ``n >= f + 3``.
    f : int
        Number of Byzantine rows.
    """
    n = sq_dist.shape[0]
    # A NaN distance (never produced from finite input) sorts as the farthest;
    # +inf becomes the largest finite value, as torch's nan_to_num makes it (in
    # numpy: no thread start for a large n × n matrix).
    others = np.nan_to_num(
        sq_dist.detach().to(device="cpu", dtype=torch.float64).numpy(), nan=math.inf
    )
    np.fill_diagonal(others, math.inf)
    # numpy's vectorised sort: the same order as torch.sort, several times faster
    # on the CPU for the short rows of an n × n matrix.
    ordered = np.sort(others, axis=1)
    nearest = torch.from_numpy(np.ascontiguousarray(ordered[:, : n - f - 2]))
    return nearest.sum(dim=1).tolist()


def _scores(
    x: torch.Tensor, f: int, sketch: CountSketch | None
) -> tuple[list[float], list[float]]:
    """Krum scores of the rows of ``x / scale`` (for decisions) and of ``x``."""
    sq, scale = scaled_pairwise_sq_distances(x, sketch=sketch)
    scaled = krum_scores(sq, f)
    if scale == 1.0:
        return scaled, scaled
    return scaled, [s * scale * scale for s in scaled]


def _shortlist_exact(
    x: torch.Tensor, f: int, scaled: list[float], sketch: CountSketch
) -> int:
    """Krum's choice among the rows the sketch short-listed
    (:meth:`CountSketch.shortlist`), on exact distances to every row: ``c · n · d``
    work, not ``n² d``."""
    rows = sketch.shortlist(scaled, ranked_ascending(scaled))
    if len(rows) == 1:
        return rows[0]
    cross, _ = scaled_cross_sq_distances(x, rows)
    cross[torch.arange(len(rows)), torch.tensor(rows)] = math.inf
    n = x.shape[0]
    exact = torch.sort(cross, dim=1).values[:, : n - f - 2].sum(dim=1).tolist()
    # Equal exact scores: the lowest row index, as exact Krum.
    return min(zip(exact, rows, strict=True))[1]


def krum(
    x: torch.Tensor, f: int, *, sketch: CountSketch | None = None
) -> AggregationResult:
    """Krum (Blanchard et al., NeurIPS 2017): the row with the lowest Krum score,
    the sum of squared distances to its ``n − f − 2`` nearest rows.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 3``.
    f : int
        Number of Byzantine rows to tolerate.
    sketch : CountSketch, optional
        Decide on count-sketched distances (opt-in, approximate; see
        :mod:`flwr_byz.aggregation.sketch`); default exact.

    Returns
    -------
    AggregationResult
        ``aggregate`` a copy of the chosen row; ``selected`` that row; ``removed`` all
        others ascending; ``scores`` every row's Krum score.
    """
    KRUM.check_input(x, f)
    scaled, scores = _scores(x, f, sketch)
    if sketch is None or not sketch.applies_to(*x.shape):
        best = ranked_ascending(scaled)[0]
    else:
        best = _shortlist_exact(x, f, scaled, sketch)
    return select_row(x, best, tuple(scores))


def multikrum(
    x: torch.Tensor,
    f: int,
    m: int | None = None,
    weights: torch.Tensor | None = None,
    *,
    sketch: CountSketch | None = None,
) -> AggregationResult:
    """MultiKrum (Blanchard et al., NeurIPS 2017): the mean of the ``m`` rows with
    the lowest Krum scores.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 3``.
    f : int
        Number of Byzantine rows to tolerate.
    m : int, optional
        Rows to average, ``1 <= m <= n``; default ``n − f``.
    weights : torch.Tensor, optional
        ``(n,)`` non-negative weights for the final mean of the selected rows (the
        selection itself is unweighted).
    sketch : CountSketch, optional
        Decide on count-sketched distances (opt-in, approximate; see
        :mod:`flwr_byz.aggregation.sketch`); default exact.

    Returns
    -------
    AggregationResult
        ``selected`` the ``m`` rows ascending; ``removed`` the others ascending;
        ``scores`` every row's Krum score; ``weights`` the final mean's coefficients.
    """
    n = MULTIKRUM.check_input(x, f)
    if m is None:
        m = n - f
    require("m", m, integer(1), owner="multikrum")
    if m > n:
        raise ValueError(f"multikrum: m={m!r}: allowed values are integers <= n = {n}")
    w = check_weights(weights, n, "multikrum")
    scaled, scores = _scores(x, f, sketch)
    chosen = sorted(ranked_ascending(scaled)[:m])
    keep = torch.zeros(n, dtype=torch.float64)
    keep[chosen] = 1.0
    coeffs = normalised(keep if w is None else keep * w, "multikrum", "selected")
    return AggregationResult(
        aggregate=combine_rows(x, coeffs),
        selected=tuple(chosen),
        removed=tuple(i for i in range(n) if keep[i] == 0),
        scores=tuple(scores),
        weights=tuple(coeffs.tolist()),
    )


def _multikrum_of_round(
    round_input: RoundInput,
    *,
    sketch: CountSketch | None = None,
    num_nodes_to_select: int | None = None,
) -> AggregationResult:
    m = num_nodes_to_select
    if m is not None:
        m = min(m, round_input.n)
    x, f, w = round_input.updates, round_input.f, round_input.weights
    return multikrum(x, f, m, w, sketch=sketch)


KRUM = Rule("krum", "2f+3", krum, uses_f=True, uses_distances=True)

MULTIKRUM = Rule(
    "multikrum",
    "2f+3",
    multikrum,
    _multikrum_of_round,
    uses_f=True,
    supports_weights=True,
    uses_distances=True,
    params=(
        Param(
            "num_nodes_to_select",
            None,
            integer(1, optional=True),
            "number m of updates averaged; None means n - f (capped at n)",
            config_key=None,
        ),
    ),
)

RULES = (KRUM, MULTIKRUM)
