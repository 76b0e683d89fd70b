"""Brute force: the subset of ``n − f`` rows with the smallest diameter."""

from __future__ import annotations

import itertools
import math

import torch

from flwr_byz.aggregation.distances import scaled_pairwise_sq_distances
from flwr_byz.aggregation.mean import combine_rows
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.rule import Rule

_BATCH = 4096


def brute_force(
    x: torch.Tensor, f: int, max_subsets: int = 200_000
) -> AggregationResult:
    """Brute force (the FABA paper's baseline): the mean of the ``n − f`` rows
    whose largest pairwise distance is smallest.

    All ``C(n, f)`` subsets are examined. Equal diameters are common (two subsets
    sharing the farthest pair), so they are compared next by the sum of their squared
    pairwise distances — which keeps the choice independent of the row order except
    on exact ties of both — and then by lowest row indices (lexicographic).

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device; ``n >= 2f + 1``.
    f : int
        Number of rows left out.
    max_subsets : int
        Refuse (``ValueError``) when ``C(n, f)`` exceeds this.

    Returns
    -------
    AggregationResult
        ``selected`` the subset; ``removed`` the others ascending; ``scores`` each
        row's largest distance to another row of the chosen subset (subset rows) or
        its smallest such distance (left-out rows).
    """
    n = RULE.check_input(x, f)
    count = math.comb(n, f)
    if count > max_subsets:
        raise ValueError(
            f"brute-force would examine C(n, f) = C({n}, {f}) = {count} subsets, more "
            f"than max_subsets = {max_subsets}; raise max_subsets or use another rule"
        )
    sq, scale = scaled_pairwise_sq_distances(x)
    sq = sq.cpu()
    size = n - f
    combos = itertools.combinations(range(n), size)
    best: tuple[int, ...] = tuple(range(size))
    best_key = (math.inf, math.inf)
    while batch := list(itertools.islice(combos, _BATCH)):
        idx = torch.tensor(batch, dtype=torch.long)
        # NaN (never produced from finite input) counts as infinitely far.
        within = (
            sq[idx[:, :, None], idx[:, None, :]].flatten(1).nan_to_num(nan=math.inf)
        )
        diam = within.amax(dim=1)
        spread = within.sum(dim=1)
        low = float(diam.min())
        tied = torch.nonzero(diam == low).flatten()
        low_spread = float(spread[tied].min())
        pick = int(tied[spread[tied] == low_spread][0])
        if (low, low_spread) < best_key:  # strict: earlier batches win ties
            best_key = (low, low_spread)
            best = batch[pick]
    keep = torch.zeros(n, dtype=torch.float64)
    keep[list(best)] = 1.0
    inside = sq[:, list(best)].clone()
    for pos, i in enumerate(best):
        inside[i, pos] = math.nan  # a row's distance to itself does not count
    far = inside.nan_to_num(nan=-math.inf).amax(dim=1).clamp(min=0.0).sqrt()
    near = inside.nan_to_num(nan=math.inf).amin(dim=1).sqrt()
    scores = [scale * (float(far[i]) if keep[i] else float(near[i])) for i in range(n)]
    coeffs = keep / keep.sum()
    return AggregationResult(
        aggregate=combine_rows(x, coeffs),
        selected=tuple(best),
        removed=tuple(i for i in range(n) if keep[i] == 0),
        scores=tuple(scores),
        weights=tuple(coeffs.tolist()),
    )


RULE = Rule("brute-force", "2f+1", brute_force, uses_f=True)
