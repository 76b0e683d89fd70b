"""FABA: repeatedly delete the row farthest from the mean (Xia et al., IJCAI 2019)."""

from __future__ import annotations

import math

import numpy as np
import torch

from flwr_byz.aggregation.distances import scaled_centred_gram
from flwr_byz.aggregation.mean import combine_rows
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.rule import Rule
from flwr_byz.aggregation.sketch import CountSketch
from flwr_byz.aggregation.validation import (
    check_weights,
    normalised,
)

# Running sums are recomputed when one deletion removes more than this many times the
# size of the k²-scaled distances left (float64 keeps ~16 digits; 2**20 leaves ten).
_CANCELLATION = 2.0**20


def faba(
    x: torch.Tensor,
    f: int,
    weights: torch.Tensor | None = None,
    *,
    sketch: CountSketch | None = None,
) -> AggregationResult:
    """FABA (Xia et al., IJCAI 2019): delete the row farthest (L2) from the mean,
    ``f`` times; average the rest.

    Computed from one Gram product: with ``s`` the 0/1 indicator of the ``k`` remaining
    rows, ``k² ‖x_i − m‖² = k² G_ii − 2k (G s)_i + sᵀ G s``, and deleting row ``j``
    updates ``G s`` and ``sᵀ G s`` in O(n) — no re-scan of the matrix. Working with
    ``k²``-scaled distances keeps integer-valued inputs exact, so exact ties stay ties
    (broken by lowest index).

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates, any device.
    f : int
        Number of rows to delete; requires ``n > 2f``.
    weights : torch.Tensor, optional
        ``(n,)`` non-negative weights for the *final* mean of the kept rows. Deletion
        always uses the unweighted mean, as in the paper, so self-reported sizes cannot
        steer which rows are deleted.
    sketch : CountSketch, optional
        Decide on count-sketched distances (opt-in, approximate; see
        :mod:`flwr_byz.aggregation.sketch`); default exact.

    Returns
    -------
    AggregationResult
        ``removed`` in deletion order; ``selected`` the kept rows; ``scores[i]`` is the
        L2 distance of row ``i`` to the mean it was deleted from, or, for kept rows, to
        the mean of the kept rows; ``weights`` the final mean's coefficients.
    """
    n = RULE.check_input(x, f)
    w = check_weights(weights, n, "faba")
    gram, scale = scaled_centred_gram(x, sketch=sketch)
    gram = gram.cpu()
    # The deletions run on numpy views of the Gram (the same float64 operations
    # as torch's, elementwise, with a fraction of the per-call cost); the sums
    # over rows stay torch's, so their rounding is the one the tests pin.
    g = gram.numpy()
    diag = np.diagonal(g)
    keep = np.ones(n, dtype=bool)
    g_keep, quad = _kept_sums(gram, keep)
    k = n
    scores = [0.0] * n
    removed: list[int] = []
    for _ in range(f):
        scaled = (k * k) * diag - (2 * k) * g_keep + quad
        j = _argmax_kept(scaled, keep)
        worst = float(scaled[j])
        scores[j] = scale * math.sqrt(max(worst, 0.0)) / k
        removed.append(j)
        dropped = abs(quad) + 2.0 * abs(float(g_keep[j])) + float(g[j, j])
        quad = quad - 2.0 * float(g_keep[j]) + float(g[j, j])
        g_keep -= g[:, j]
        keep[j] = False
        k -= 1
        if dropped > _CANCELLATION * (k * k) * float(diag[keep].max()):
            # The deleted row dwarfed the rest (a huge update): the running sums
            # lost the others' digits, so they are summed afresh.
            g_keep, quad = _kept_sums(gram, keep)
    final = (
        (k * k) * gram.diagonal() - (2 * k) * torch.from_numpy(g_keep) + quad
    ).clamp(min=0.0).sqrt() / k
    selected = tuple(int(i) for i in np.flatnonzero(keep))
    for i in selected:
        scores[i] = scale * float(final[i])
    keep = torch.from_numpy(keep.astype(np.float64))
    coeffs = keep if w is None else keep * w
    coeffs = normalised(coeffs, "faba", "kept")
    return AggregationResult(
        aggregate=combine_rows(x, coeffs),
        selected=selected,
        removed=tuple(removed),
        scores=tuple(scores),
        weights=tuple(coeffs.tolist()),
    )


def _kept_sums(gram: torch.Tensor, keep: np.ndarray) -> tuple[np.ndarray, float]:
    """``G s`` (numpy, writable) and ``sᵀ G s`` for the 0/1 indicator ``s`` of
    ``keep``. Row by row (not a BLAS gemv, which may round equal rows
    differently), so duplicated updates keep exactly equal distances and tie by
    lowest index."""
    s = torch.from_numpy(keep.astype(np.float64))
    g_keep = (gram * s).sum(dim=1)
    return g_keep.numpy(), float(s @ g_keep)


def _argmax_kept(values: np.ndarray, keep: np.ndarray) -> int:
    """Index of the largest value among the kept rows: a NaN first (the first
    NaN), ties by lowest index (as
    :func:`~flwr_byz.aggregation.ordering.argmax_lowest_allowed`)."""
    candidates = np.where(keep, values, -math.inf)
    nan = np.isnan(candidates)
    if nan.any():
        return int(np.flatnonzero(nan)[0])
    if not keep.any():
        raise ValueError("argmax_lowest: no row is allowed")
    best = int(np.argmax(candidates))  # the first of equal maxima
    if not keep[best]:  # every kept value is -inf
        best = int(np.flatnonzero(keep)[0])
    return best


RULE = Rule(
    "faba", "2f+1", faba, uses_f=True, supports_weights=True, uses_distances=True
)
