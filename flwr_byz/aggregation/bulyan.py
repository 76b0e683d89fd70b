"""Bulyan (El Mhamdi et al., ICML 2018): Krum selection, then a coordinate-wise step."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.bounds import require_rows
from flwr_byz.aggregation.coordinatewise import (
    column_chunks,
    row_mean,
    sorted_median,
)
from flwr_byz.aggregation.distances import scaled_pairwise_sq_distances
from flwr_byz.aggregation.krum import krum_scores
from flwr_byz.aggregation.ordering import argmin_lowest
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.sketch import CountSketch
from flwr_byz.aggregation.validation import check_f, check_updates


def bulyan(
    x: torch.Tensor, f: int, *, sketch: CountSketch | None = None
) -> AggregationResult:
    """Bulyan.

    1. Choose ``θ = n − 2f`` rows by Krum repeatedly: each time, Krum scores (with the
       same ``f``) are recomputed on the rows not chosen yet, and the lowest-scoring
       row is chosen (ties: lowest index).
    2. Per coordinate, average the ``β = θ − 2f`` values of the chosen rows closest to
       their coordinate median (numpy semantics for even ``θ``); equally close values
       are taken from the lowest row index first.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 4f + 3``.
    f : int
        Number of Byzantine rows to tolerate.
    sketch : CountSketch, optional
        Decide on count-sketched distances (opt-in, approximate; see
        :mod:`flwr_byz.aggregation.sketch`); default exact.

    Returns
    -------
    AggregationResult
        ``selected`` the θ chosen rows ascending; ``removed`` the others ascending;
        ``scores`` every row's Krum score on the full set.
    """
    n, _ = check_updates(x, "bulyan")
    f = check_f(f, "bulyan")
    require_rows("bulyan", n, f)
    sq, scale = scaled_pairwise_sq_distances(x, sketch=sketch)
    sq = sq.cpu()
    first_scores = [s * scale * scale for s in krum_scores(sq, f)]
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):
        idx = torch.tensor(remaining)
        # ``remaining`` is ascending, so the lowest position is the lowest row.
        best = argmin_lowest(krum_scores(sq[idx][:, idx], f))
        chosen.append(remaining.pop(best))
    chosen.sort()
    beta = len(chosen) - 2 * f
    rows = torch.tensor(chosen, device=x.device)

    def closest_mean(chunk: torch.Tensor) -> torch.Tensor:
        # chunk: (c, θ), column t holds chosen[t] (ascending row index), so the
        # stable sort takes equally close values from the lowest row first.
        med = sorted_median(torch.sort(chunk, dim=1).values)
        values = chunk.to(torch.float64)
        order = torch.sort((values - med[:, None]).abs(), dim=1, stable=True).indices
        return row_mean(torch.gather(values, 1, order[:, :beta]))

    agg = column_chunks(x, closest_mean, rows=rows)
    return AggregationResult(
        aggregate=agg,
        selected=tuple(chosen),
        removed=tuple(sorted(set(range(n)) - set(chosen))),
        scores=tuple(first_scores),
    )
