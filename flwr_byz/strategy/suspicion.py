"""``suspected-node-ids``: who looks like an attacker this round, whatever the rule.

What a rule *did* (``removed-node-ids``, ``selected-node-ids``) is not who attacked:
FABA removes ``f`` nodes every round, attack or not, and Krum removes all but one.
The suspected set answers the other question with one definition for every rule:

    s_i = ‖Δ_i − median(Δ)‖₂, the L2 distance of node i's update to the
    coordinate-wise median of the round's valid updates, on an evenly spread
    sample of 2048 columns (all of them when there are no more; fewer beyond 64
    updates, so that the sample holds at most 2^17 values, and never fewer than
    128 columns);
    suspected = { i : s_i > med(s) + k · max(1.4826 · MAD(s), 0.05 · med(s)) }

with ``k = 3`` (:data:`OUTLIER_K`): the robust z-score of the distance exceeds 3
(1.4826 · MAD estimates the standard deviation of normal data; the floor of 5 % of
the median distance keeps nearly identical honest updates from being flagged for
float noise). A non-finite distance (an update whose difference overflows float32)
is always suspected. With fewer than 3 valid updates nothing is suspected. The
column sample keeps this diagnostic at a few milliseconds whatever the model size
and the number of clients (the full median would cost as much as the Median rule
itself, and selection costs far more per value than a Gram product); an attack confined
to a few coordinates outside the sample is not seen by it. With no
attack the set is usually empty; an attacker with an honest-looking update (a small
minority of label flippers, say) is not in it. Strategies that score nodes against
the server's own data (FLTrust, Zeno) report their own verdict under the same key
instead (see their documentation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flwr_byz.aggregation.distances import SAMPLE_BLOCK, sample_starts

#: Robust z-score above which a node's distance to the median is an outlier.
OUTLIER_K = 3.0
_MAD_TO_STD = 1.4826
_RELATIVE_FLOOR = 0.05
_SAMPLE_COLUMNS = 2048
_SAMPLE_VALUES = 1 << 17
_MIN_COLUMNS = 128
_SMALL_BLOCK = 32
_PAGE = 4096
# Float32 values in a 64-byte cache line.
_LINE = 16


def _sample_blocks(n: int, d: int) -> tuple[list[int], int] | None:
    """First column and width of each block of the sample (``None``: all)."""
    columns = min(_SAMPLE_COLUMNS, max(_MIN_COLUMNS, _SAMPLE_VALUES // max(n, 1)))
    block = SAMPLE_BLOCK if columns == _SAMPLE_COLUMNS else _SMALL_BLOCK
    starts = sample_starts(d, most=columns, block=block)
    return None if starts is None else (starts, block)


def sample_index(n: int, d: int) -> np.ndarray | None:
    """Columns of the sample for ``n`` updates of length ``d`` (``None``: all)."""
    blocks = _sample_blocks(n, d)
    if blocks is None:
        return None
    starts, block = blocks
    return (np.asarray(starts)[:, None] + np.arange(block)).reshape(-1)


def _sample_by_column(updates: np.ndarray, sampled: bool) -> np.ndarray:
    """The sample's columns of ``updates`` as the rows of a new C-ordered array.

    Copied block by block: a block of columns is a few cache lines of each row,
    read once. A row stride that is a multiple of 4 KiB (2048 float32 columns,
    the sample a streamed mean keeps) would put all of a column in one cache
    set: such rows are first copied into rows one cache line longer, which
    costs far less than the conflicts.
    """
    n, d = updates.shape
    blocks = None if sampled else _sample_blocks(n, d)
    if blocks is None:
        if updates.strides[0] % _PAGE == 0:
            padded = np.empty((n, d + _LINE), dtype=updates.dtype)[:, :d]
            np.copyto(padded, updates)
            updates = padded
        blocks = ([0], d)
    starts, block = blocks
    out = np.empty((len(starts) * block, n), dtype=updates.dtype)
    for k, start in enumerate(starts):
        out[k * block : (k + 1) * block] = updates[:, start : start + block].T
    return out


def median_distances(updates: torch.Tensor, *, sampled: bool = False) -> np.ndarray:
    """``(n,)`` float64 L2 distances of each row to the coordinate-wise median,
    on the column sample (see the module's definition; ``sampled``: ``updates``
    already holds only the sample's columns)."""
    if updates.device.type != "cpu":
        # The sample is small (at most 2^17 values): on the CPU.
        index = None if sampled else sample_index(*updates.shape)
        if index is not None:
            updates = updates[:, torch.from_numpy(index).to(updates.device)]
        updates, sampled = updates.cpu(), True
    by_column = _sample_by_column(updates.numpy(), sampled)
    # Sorted in the input precision (the order does not depend on it; numpy's
    # vectorised sort of short rows beats selection), midpoints and distances in
    # float64.
    ordered = by_column.copy()
    ordered.sort(axis=1)
    difference = np.subtract(
        by_column, _sorted_median(ordered)[:, None], dtype=np.float64
    )
    return np.sqrt(np.einsum("ij,ij->j", difference, difference))


def _sorted_median(ordered: np.ndarray) -> np.ndarray:
    """:func:`~flwr_byz.aggregation.coordinatewise.sorted_median` of a numpy
    array, the same float64 operations without a tensor per step."""
    r = ordered.shape[1]
    if r % 2 == 1:
        return ordered[:, r // 2].astype(np.float64)
    low = ordered[:, r // 2 - 1].astype(np.float64)
    high = ordered[:, r // 2].astype(np.float64)
    mid = np.add(low, high)
    mid /= 2
    bad = ~np.isfinite(mid)
    if bad.any():
        mid[bad] = low[bad] / 2 + high[bad] / 2
    return mid


def outlier_rows(scores: np.ndarray, k: float = OUTLIER_K) -> list[int]:
    """Rows whose score exceeds ``med + k · max(1.4826 · MAD, 0.05 · med)``.

    Non-finite scores are outliers; they are left out of the median and MAD.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if scores.size < 3:
        return []
    if finite.sum() < 3:
        return [int(i) for i in np.flatnonzero(~finite)]
    values = scores[finite]
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    threshold = med + k * max(_MAD_TO_STD * mad, _RELATIVE_FLOOR * abs(med))
    if not math.isfinite(threshold):
        return [int(i) for i in np.flatnonzero(~finite)]
    return np.flatnonzero(~finite | (scores > threshold)).tolist()


def suspected_rows(
    updates: torch.Tensor, k: float = OUTLIER_K, *, sampled: bool = False
) -> list[int]:
    """Rows of ``updates`` whose distance to the coordinate-wise median is a
    robust outlier (the module's definition), ascending; ``sampled`` as in
    :func:`median_distances`."""
    if updates.shape[0] < 3:
        return []
    return outlier_rows(median_distances(updates, sampled=sampled), k)
