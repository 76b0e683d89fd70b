"""An opt-in sketched distance: a seeded count sketch of the updates.

The exact distance-based rules are bound by one ``n × n × d`` Gram product. With
many clients that product dominates a round; a *count sketch* (Charikar et al.
2002; the sparse Johnson–Lindenstrauss transform of Kane and Nelson with one
non-zero per column, as in feature hashing) maps every update to ``k ≪ d``
numbers in one pass over the matrix, ``y = S x`` with

    y[b] = Σ_{j : h(j) = b} s(j) · x[j],

``h(j)`` uniform in ``[0, k)`` and ``s(j) = ±1``, both drawn once from the seed.
Distances between sketches estimate the true distances: for any vector ``v`` (the
difference of two updates, or of an update and a mean of others)

    E‖Sv‖² = ‖v‖²,   Var‖Sv‖² = (2/k)(‖v‖⁴ − Σ_j v_j⁴) ≤ 2‖v‖⁴ / k,

so a squared distance has a relative standard deviation of at most ``√(2/k)``
(2.2 % at the default ``k = 4096``; Chebyshev: off by more than 10 % with
probability at most ``200/k``, under 5 %). The rules then decide on the ``n × k``
sketch: the Gram product costs ``n²k`` instead of ``n²d``, and the one pass of the
sketch costs about one copy of the matrix.

What it changes: decisions follow the estimated distances. Where two candidates'
scores differ by less than the distortion (honest updates that are nearly
interchangeable) the sketch may pick another of them; a Byzantine update far from
the honest ones (farther than a few ``√(2/k)`` of the distances) is ranked as in
exact mode. The hash and the signs are secret to the server (drawn from its
seed), so an attacker cannot put its deviation where the sketch does not look;
one who knew them could. Exact distances stay the default.

Rows are centred on a reference row before they are sketched (distances are
translation invariant), so a large component common to all rows costs no
precision. A float32 chunk whose sketch overflows is redone in float64: any
finite input gives a finite sketch.
"""

from __future__ import annotations

import torch

from flwr_byz.aggregation.validation import check_updates
from flwr_byz.validation import integer, require

#: Default sketch width ``k``.
DEFAULT_SKETCH_DIM = 4096
#: Below this many rows the exact Gram product costs less than the sketch's pass
#: over the matrix (measured: ``benchmarks.bench_scale``), so rules stay exact.
DEFAULT_MIN_ROWS = 64
#: Most rows a sketched single-row rule scores again on exact distances.
SHORTLIST = 16
_ROWS_PER_CHUNK = 16


class CountSketch:
    """A seeded count sketch ``R^d → R^k`` (see the module's documentation).

    The hash and signs depend only on ``(k, seed, d)``; they are drawn once per
    model size and device and reused every round.

    Parameters
    ----------
    k : int
        Sketch width, ``>= 16``. Relative standard deviation of a squared
        distance ``<= √(2/k)``.
    seed : int
        Seed of the hash and the signs.
    min_rows : int
        Rules sketch only matrices with more rows than this (and more columns
        than ``k``); smaller ones get exact distances, which cost less there.
    """

    def __init__(
        self,
        k: int = DEFAULT_SKETCH_DIM,
        seed: int = 0,
        min_rows: int = DEFAULT_MIN_ROWS,
    ) -> None:
        require("k", k, integer(16), owner="CountSketch")
        require("seed", seed, integer(), owner="CountSketch")
        require("min_rows", min_rows, integer(0), owner="CountSketch")
        self.k = k
        self.seed = seed
        self.min_rows = min_rows
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"CountSketch(k={self.k}, seed={self.seed})"

    def hash_and_signs(
        self, d: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, s)`` for ``d`` columns: int64 buckets in ``[0, k)`` and ±1."""
        key = (d, str(device))
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed)
            h = torch.randint(0, self.k, (d,), generator=gen)
            s = torch.randint(0, 2, (d,), generator=gen).to(torch.float32) * 2 - 1
            self._cache[key] = (h.to(device), s.to(device))
        return self._cache[key]

    def applies_to(self, n: int, d: int) -> bool:
        """Whether an ``(n, d)`` matrix is sketched (else exact distances)."""
        return n > self.min_rows and d > self.k

    def shortlist(self, scores: list[float], ranked: list[int]) -> list[int]:
        """Rows a single-row rule (Krum, the medoid) scores again exactly.

        ``ranked`` orders the rows by their sketched ``scores``, best first. Rows
        whose score is within ``6 √(2/k)`` (relative) of the best, at most
        :data:`SHORTLIST` of them, best first: nearly interchangeable rows
        (honest updates of similar quality) are within the distortion of each
        other, so the sketch alone could pick another of them than exact
        distances would.
        """
        low = scores[ranked[0]]
        slack = 6.0 * self.relative_std_bound() * abs(low)
        return [i for i in ranked[:SHORTLIST] if scores[i] <= low + slack]

    def relative_std_bound(self) -> float:
        """``√(2/k)``: bound on the relative standard deviation of a squared
        distance between sketches."""
        return (2.0 / self.k) ** 0.5

    def project(
        self, x: torch.Tensor, centre: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The sketch ``(x_i − centre) S`` of every row.

        Parameters
        ----------
        x : torch.Tensor
            ``(n, d)`` floating updates, any device.
        centre : torch.Tensor, optional
            ``(d,)`` row subtracted first (default: none).

        Returns
        -------
        torch.Tensor
            ``(n, k)`` on ``x``'s device: float32 for float32 (and half) input
            whose sketch is finite in float32, else float64.
        """
        n, d = check_updates(x, "CountSketch.project")
        h, s = self.hash_and_signs(d, x.device)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if work == torch.float64:
            s = s.to(torch.float64)
        rows = min(n, _ROWS_PER_CHUNK)
        buf = torch.empty(rows, d, dtype=work, device=x.device)
        out = torch.zeros(n, self.k, dtype=work, device=x.device)
        redo: list[int] = []
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            b = buf[: r1 - r0]
            if centre is None:
                b.copy_(x[r0:r1])
            else:
                torch.sub(x[r0:r1], centre, out=b)
            b.mul_(s)
            part = out[r0:r1]
            part.scatter_add_(1, h.expand(r1 - r0, d), b)
            if work == torch.float32 and not bool(torch.isfinite(part).all()):
                redo.append(r0)
        if not redo:
            return out
        # Overflow in float32 (values near 1e38): float64 holds any sum of them.
        out = out.to(torch.float64)
        s64 = s.to(torch.float64)
        for r0 in redo:
            r1 = min(r0 + rows, n)
            b = x[r0:r1].to(torch.float64)
            if centre is not None:
                b = b - centre.to(torch.float64)
            b.mul_(s64)
            out[r0:r1] = 0.0
            out[r0:r1].scatter_add_(1, h.expand(r1 - r0, d), b)
        return out
