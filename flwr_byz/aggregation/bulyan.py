"""Bulyan (El Mhamdi et al., ICML 2018): Krum selection, then a coordinate-wise step."""

from __future__ import annotations

import math

import torch

from flwr_byz.aggregation.coordinatewise import (
    column_chunks,
    row_mean,
    sorted_median,
)
from flwr_byz.aggregation.distances import scaled_pairwise_sq_distances
from flwr_byz.aggregation.krum import krum_scores
from flwr_byz.aggregation.ordering import argmin_lowest
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.rule import Rule
from flwr_byz.aggregation.sketch import CountSketch

# A row's running score is summed afresh when one removal takes away more than
# this many times what is left (float64 keeps ~16 digits; 2**20 leaves ten).
_CANCELLATION = 2.0**20
# Rows whose running score is within this (relative) of the lowest are summed
# afresh before the choice.
_NEAR_TIE = 1e-9


def repeated_krum(sq: torch.Tensor, f: int, count: int) -> list[int]:
    """Krum ``count`` times, each on the rows not chosen yet; the chosen rows in order.

    Each time, every remaining row's score is the sum of the squared distances to
    its ``m − f − 2`` nearest remaining rows (``m`` remaining), and the lowest score
    is chosen (ties: lowest index). Rather than sorting the remaining distances
    again each time (``O(n³ log n)`` in all), every row's neighbours are sorted
    once and its running sum is updated in ``O(1)`` per removal: the set loses the
    chosen row if it held it, else its farthest member. ``O(n² log n)`` in all.

    Parameters
    ----------
    sq : torch.Tensor
        ``(n, n)`` float64 squared distances on the CPU, zero diagonal.
    f : int
        Krum's budget.
    count : int
        Rows to choose, ``<= n``.
    """
    n = sq.shape[0]
    dist = sq.to(torch.float64).clone().nan_to_num(nan=math.inf)
    dist.fill_diagonal_(math.inf)
    off = ~torch.eye(n, dtype=torch.bool)
    if not bool(torch.isfinite(dist[off]).all()):
        return _repeated_krum_by_sorting(sq, f, count)
    order = torch.sort(dist, dim=1, stable=True).indices
    near = torch.gather(dist, 1, order)  # row i: its distances, nearest first
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(n).expand(n, n))
    alive = torch.ones(n, dtype=torch.bool)
    keep = n - f - 2  # neighbours in each score
    # p[i]: position (in row i's order) of the farthest neighbour in its score.
    p = torch.full((n,), keep - 1, dtype=torch.long)
    score = near[:, : max(keep, 0)].sum(dim=1)
    rows = torch.arange(n)
    chosen: list[int] = []
    for _ in range(count):
        candidates = torch.nonzero(alive).flatten()
        low = float(score[candidates].min())
        # Running sums round differently from a fresh sum, and exact ties are
        # common (two mutual nearest neighbours when one neighbour counts): rows
        # near the lowest are summed afresh, in krum_scores' order, to decide.
        near_low = candidates[score[candidates] <= low + _NEAR_TIE * abs(low)]
        if len(near_low) > 1 and keep > 0:
            exact = []
            for i in near_low.tolist():
                members = order[i, : p[i] + 1]
                members = members[alive[members]]
                exact.append(float(near[i, pos[i, members]].reshape(1, -1).sum(dim=1)))
            best = int(near_low[argmin_lowest(exact)])
        else:
            best = int(candidates[argmin_lowest(score[candidates])])
        chosen.append(best)
        alive[best] = False
        keep -= 1
        if keep <= 0:
            score.zero_()
            p.fill_(-1)
            continue
        pb = pos[:, best]
        held = pb <= p
        removed = torch.where(held, near[rows, pb], near[rows, p.clamp(min=0)])
        score -= removed
        # The farthest member left the score (or was the chosen row): step back to
        # the previous neighbour still remaining.
        move = ~held | (pb == p)
        p = torch.where(move, p - 1, p)
        while True:
            stale = move & (p >= 0) & ~alive[order[rows, p.clamp(min=0)]]
            if not bool(stale.any()):
                break
            p = torch.where(stale, p - 1, p)
        fresh = alive & (removed.abs() > _CANCELLATION * score.abs())
        for i in torch.nonzero(fresh).flatten().tolist():
            members = order[i, : p[i] + 1]
            score[i] = dist[i, members[alive[members]]].sum()
    return chosen


def _repeated_krum_by_sorting(sq: torch.Tensor, f: int, count: int) -> list[int]:
    """:func:`repeated_krum` by sorting the remaining distances each time (for
    non-finite distances, whose running sums would not subtract)."""
    remaining = list(range(sq.shape[0]))
    chosen: list[int] = []
    for _ in range(count):
        idx = torch.tensor(remaining)
        # ``remaining`` is ascending, so the lowest position is the lowest row.
        best = argmin_lowest(krum_scores(sq[idx][:, idx], f))
        chosen.append(remaining.pop(best))
    return chosen


def bulyan(
    x: torch.Tensor, f: int, *, sketch: CountSketch | None = None
) -> AggregationResult:
    """Bulyan (El Mhamdi et al., ICML 2018): ``n − 2f`` rows by repeated Krum, then
    per coordinate the mean of the ``n − 4f`` values closest to the median.

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
    n = RULE.check_input(x, f)
    sq, scale = scaled_pairwise_sq_distances(x, sketch=sketch)
    sq = sq.cpu()
    first_scores = [s * scale * scale for s in krum_scores(sq, f)]
    chosen = sorted(repeated_krum(sq, f, n - 2 * f))
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


RULE = Rule("bulyan", "4f+3", bulyan, uses_f=True, uses_distances=True)
