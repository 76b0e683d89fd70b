"""Plain, obviously-correct reference implementations of every aggregation rule.

Written straight from DESIGN.md §4 with no tricks: rows are lists of exact rationals
(``fractions.Fraction`` of the float values), distances are sums of squared
differences, means are sums divided by counts, and loops follow the definitions.
Because the arithmetic is exact, ties in the data are exact ties here and are broken by
lowest index, as the specification says. Only the medoid (square roots) and the
Weiszfeld iteration use floating point.

Each function returns a :class:`Ref` with the aggregate as a list of floats.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

Row = list[Fraction]


@dataclass
class Ref:
    aggregate: list[float]
    selected: tuple[int, ...]
    removed: tuple[int, ...] = ()
    scores: list[float] = field(default_factory=list)


def rows_of(x: torch.Tensor) -> list[Row]:
    return [[Fraction(v) for v in row] for row in x.double().cpu().tolist()]


def sq_dist(a: Row, b: Row) -> Fraction:
    return sum(((p - q) ** 2 for p, q in zip(a, b, strict=True)), Fraction(0))


def average(
    rows: list[Row], idx: list[int], weights: list[Fraction] | None = None
) -> Row:
    w = (
        {i: Fraction(1) for i in idx}
        if weights is None
        else {i: weights[i] for i in idx}
    )
    total = sum(w.values())
    d = len(rows[0])
    return [sum(w[i] * rows[i][j] for i in idx) / total for j in range(d)]


def floats(row: Row) -> list[float]:
    return [float(v) for v in row]


def exact_weights(weights: torch.Tensor | None) -> list[Fraction] | None:
    return None if weights is None else [Fraction(v) for v in weights.double().tolist()]


def ref_pairwise_sq_distances(x: torch.Tensor) -> list[list[float]]:
    rows = rows_of(x)
    return [[float(sq_dist(a, b)) for b in rows] for a in rows]


def ref_mean(x: torch.Tensor, weights: torch.Tensor | None = None) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    w = exact_weights(weights)
    selected = tuple(i for i in range(n) if w is None or w[i] > 0)
    return Ref(floats(average(rows, list(selected), w)), selected)


def ref_faba(x: torch.Tensor, f: int, weights: torch.Tensor | None = None) -> Ref:
    rows = rows_of(x)
    remaining = list(range(len(rows)))
    removed = []
    for _ in range(f):
        m = average(rows, remaining)
        dist = {i: sq_dist(rows[i], m) for i in remaining}
        farthest = max(dist.values())
        worst = min(i for i in remaining if dist[i] == farthest)
        removed.append(worst)
        remaining.remove(worst)
    agg = average(rows, remaining, exact_weights(weights))
    return Ref(floats(agg), tuple(remaining), tuple(removed))


def all_sq_dists(rows: list[Row]) -> list[list[Fraction]]:
    return [[sq_dist(a, b) for b in rows] for a in rows]


def krum_scores(
    dist: list[list[Fraction]], idx: list[int], f: int
) -> dict[int, Fraction]:
    scores = {}
    for i in idx:
        dists = sorted(dist[i][j] for j in idx if j != i)
        scores[i] = sum(dists[: len(idx) - f - 2], Fraction(0))
    return scores


def lowest(scores: dict[int, Fraction]) -> int:
    best = min(scores.values())
    return min(i for i in scores if scores[i] == best)


def ref_krum(x: torch.Tensor, f: int) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    scores = krum_scores(all_sq_dists(rows), list(range(n)), f)
    best = lowest(scores)
    removed = tuple(i for i in range(n) if i != best)
    return Ref(
        floats(rows[best]), (best,), removed, [float(scores[i]) for i in range(n)]
    )


def ref_multikrum(
    x: torch.Tensor, f: int, m: int | None = None, weights: torch.Tensor | None = None
) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    m = n - f if m is None else m
    scores = krum_scores(all_sq_dists(rows), list(range(n)), f)
    left = dict(scores)
    chosen = []
    for _ in range(m):
        best = lowest(left)
        chosen.append(best)
        del left[best]
    chosen.sort()
    agg = average(rows, chosen, exact_weights(weights))
    removed = tuple(i for i in range(n) if i not in chosen)
    return Ref(
        floats(agg), tuple(chosen), removed, [float(scores[i]) for i in range(n)]
    )


def exact_median(values: list[Fraction]) -> Fraction:
    s = sorted(values)
    k = len(s)
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2


def ref_bulyan(x: torch.Tensor, f: int) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    dist = all_sq_dists(rows)
    remaining = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        best = lowest(krum_scores(dist, remaining, f))
        chosen.append(best)
        remaining.remove(best)
    chosen.sort()
    beta = len(chosen) - 2 * f
    agg = []
    for j in range(len(rows[0])):
        med = exact_median([rows[i][j] for i in chosen])
        closest = sorted(chosen, key=lambda i: (abs(rows[i][j] - med), i))[:beta]
        agg.append(float(sum(rows[i][j] for i in closest) / beta))
    return Ref(agg, tuple(chosen), tuple(sorted(remaining)))


def ref_medoid(x: torch.Tensor, f: int = 0) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    sums = [
        sum(math.sqrt(float(sq_dist(rows[i], rows[j]))) for j in range(n))
        for i in range(n)
    ]
    best = min(range(n), key=lambda i: (sums[i], i))
    removed = tuple(i for i in range(n) if i != best)
    return Ref(floats(rows[best]), (best,), removed, sums)


def ref_geometric_median(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    eps: float = 1e-8,
    max_iter: int = 100,
    tol: float = 1e-7,
) -> Ref:
    pts = x.double().cpu().numpy()
    n = pts.shape[0]
    a = np.full(n, 1.0 / n) if weights is None else weights.double().numpy()
    a = a / a.sum()
    z = a @ pts
    objective = float(a @ np.linalg.norm(pts - z, axis=1))
    for _ in range(max_iter):
        b = a / np.maximum(eps, np.linalg.norm(pts - z, axis=1))
        z = (b @ pts) / b.sum()
        previous, objective = objective, float(a @ np.linalg.norm(pts - z, axis=1))
        if abs(previous - objective) <= tol * objective:
            break
    return Ref(z.tolist(), tuple(i for i in range(n) if a[i] > 0))


def ref_median(x: torch.Tensor) -> Ref:
    rows = rows_of(x)
    agg = [float(exact_median([r[j] for r in rows])) for j in range(len(rows[0]))]
    return Ref(agg, tuple(range(len(rows))))


def ref_trimmed_mean(x: torch.Tensor, beta: float) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    cut = math.floor(beta * n)
    agg = []
    for j in range(len(rows[0])):
        kept = sorted(r[j] for r in rows)[cut : n - cut]
        agg.append(float(sum(kept) / len(kept)))
    return Ref(agg, tuple(range(n)))


def ref_brute_force(x: torch.Tensor, f: int) -> Ref:
    rows = rows_of(x)
    n = len(rows)
    best, best_key = None, None
    for subset in itertools.combinations(range(n), n - f):
        pair_d = [
            sq_dist(rows[i], rows[j]) for i, j in itertools.combinations(subset, 2)
        ]
        key = (max(pair_d, default=Fraction(0)), sum(pair_d, Fraction(0)))
        if best_key is None or key < best_key:
            best, best_key = subset, key
    assert best is not None
    removed = tuple(i for i in range(n) if i not in best)
    return Ref(floats(average(rows, list(best))), tuple(best), removed)


def _log(q: Fraction) -> float:
    """log of a positive exact rational, however large (no float overflow)."""
    return math.log(q.numerator) - math.log(q.denominator)


def ref_fltrust(x: torch.Tensor, server: torch.Tensor) -> Ref:
    """FLTrust straight from its definition: exact dot products and squared norms.

    Ratios of norms go through logarithms so that 1e300-sized rows do not overflow.
    """
    rows = rows_of(x)
    s = [Fraction(v) for v in server.double().cpu().tolist()]
    n2_s = sum((v * v for v in s), Fraction(0))
    trust = []
    for row in rows:
        n2 = sum((v * v for v in row), Fraction(0))
        if n2 == 0 or n2_s == 0:
            trust.append(0.0)
            continue
        dot = sum((a * b for a, b in zip(row, s, strict=True)), Fraction(0))
        cos = (
            0.0
            if dot == 0
            else math.copysign(
                math.exp(_log(abs(dot)) - 0.5 * _log(n2) - 0.5 * _log(n2_s)), dot
            )
        )
        trust.append(max(0.0, min(1.0, cos)))
    total = sum(trust)
    n, d = len(rows), len(s)
    if total <= 0:
        return Ref([0.0] * d, (), tuple(range(n)), trust)
    agg = [0.0] * d
    for i, row in enumerate(rows):
        if trust[i] == 0:
            continue
        n2 = sum((v * v for v in row), Fraction(0))
        c = trust[i] / total * math.exp(0.5 * _log(n2_s) - 0.5 * _log(n2))
        for j in range(d):
            agg[j] += c * float(row[j])
    return Ref(
        agg,
        tuple(i for i in range(n) if trust[i] > 0),
        tuple(i for i in range(n) if trust[i] == 0),
        trust,
    )


def ref_zeno(
    x: torch.Tensor, theta: torch.Tensor, loss, b: int, rho: float, gamma: float = 1.0
) -> Ref:
    """Zeno: score every row on its own, keep the n − b best (ties: lowest index).

    ``loss`` maps one ``(d,)`` float64 vector to a float.
    """
    rows = rows_of(x)
    th = theta.double()
    before = float(loss(th))
    scores = []
    for i, row in enumerate(rows):
        after = float(loss(th + gamma * x[i].double()))
        sq = float(sum((v * v for v in row), Fraction(0)))
        s = before - after - rho * sq
        scores.append(s if math.isfinite(s) else -math.inf)
    order = sorted(range(len(rows)), key=lambda i: (-scores[i], i))
    kept = sorted(order[: len(rows) - b])
    return Ref(
        floats(average(rows, kept)),
        tuple(kept),
        tuple(sorted(order[len(rows) - b :])),
        scores,
    )
