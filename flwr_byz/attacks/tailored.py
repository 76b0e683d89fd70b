"""Defence-aware colluding attacks on update vectors (no model, no data).

Every function works on flat float64 updates ``Δ = w_local − θ`` and returns what
the colluders send: one ``(d,)`` vector that every colluder sends, or a ``(c, d)``
matrix with one row per colluder.

- :func:`scaled_to`, :func:`honest_norm`: an update at an honest norm;
- :func:`qv_orthogonal`: ascent made orthogonal to a QV-descent direction, plus an
  ε margin along it;
- :func:`sybil_rows`: identical rows, or identical plus small Gaussian noise;
- :func:`fang_krum`, :func:`fang_trim`: Fang et al. (USENIX Security 2020), the
  full-knowledge attacks against Krum and the trimmed mean;
- :func:`agr_tailored`: Shejwalkar & Houmansadr (NDSS 2021), γ optimised against
  the defence's own aggregation function;
- :func:`drift_weight`: the pretense-then-drift schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flwr_byz.aggregation.krum import krum

from .omniscient import _deviation

#: ``aggregate(x)``: the defence's rule on an ``(n, d)`` matrix, returning ``(d,)``.
Aggregate = Callable[[torch.Tensor], torch.Tensor]


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else torch.zeros_like(v)


def honest_norm(updates: torch.Tensor) -> float:
    """The median L2 norm of the ``(h, d)`` honest updates (an honest-looking size)."""
    if updates.ndim != 2 or updates.shape[0] < 1:
        raise ValueError(f"updates has shape {tuple(updates.shape)}; expected (h, d)")
    return float(torch.linalg.vector_norm(updates.to(torch.float64), dim=1).median())


def scaled_to(v: torch.Tensor, norm: float) -> torch.Tensor:
    """``v`` rescaled to L2 norm ``norm`` (a zero ``v`` stays zero)."""
    return _unit(v.to(torch.float64)) * float(norm)


def qv_orthogonal(
    ascent: torch.Tensor,
    qv_descent: torch.Tensor,
    epsilon: float = 0.3,
    norm: float = 1.0,
) -> torch.Tensor:
    """Ascent on the colluders' data, orthogonal to QV descent, plus an ε margin.

    With ``q = qv_descent / ‖qv_descent‖`` and ``u`` the unit part of ``ascent``
    orthogonal to ``q``, the update is ``norm · (u + ε q) / ‖u + ε q‖``: its
    component along QV descent is exactly ``ε / √(1 + ε²)`` of its norm (a QV
    judge sees it as mildly helpful), the rest climbs the colluders' loss.

    Parameters
    ----------
    ascent : torch.Tensor
        ``(d,)`` the direction that raises the colluders' loss (``+∇ℓ(own data)``).
    qv_descent : torch.Tensor
        ``(d,)`` the direction that lowers the loss on the colluders' own samples
        of the QV distribution (``−∇ℓ(QV samples)``).
    epsilon : float
        The margin along QV descent (>= 0).
    norm : float
        The L2 norm of the result (an honest update's).
    """
    if epsilon < 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon={epsilon!r}; expected a finite float >= 0")
    q = _unit(qv_descent.to(torch.float64))
    a = ascent.to(torch.float64)
    u = _unit(a - (a @ q) * q)
    return scaled_to(u + epsilon * q, norm)


def sybil_rows(
    v: torch.Tensor,
    count: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``count`` copies of ``v``; with ``noise > 0`` each row adds Gaussian noise
    of expected norm ``noise · ‖v‖`` (per coordinate σ = noise·‖v‖/√d)."""
    if count < 1:
        raise ValueError(f"count={count!r}; expected an integer >= 1")
    if noise < 0 or not math.isfinite(noise):
        raise ValueError(f"noise={noise!r}; expected a finite float >= 0")
    v = v.to(torch.float64)
    rows = v.expand(count, -1).clone()
    if noise > 0 and v.numel():
        sigma = noise * float(torch.linalg.vector_norm(v)) / math.sqrt(v.numel())
        rows += sigma * torch.randn(
            rows.shape, generator=generator, dtype=torch.float64
        )
    return rows


def _krum_selects_crafted(honest: torch.Tensor, crafted: torch.Tensor, f: int) -> bool:
    x = torch.cat([honest, crafted])
    chosen = krum(x, f).selected
    return bool(chosen) and chosen[0] >= honest.shape[0]


def fang_krum(
    benign: torch.Tensor,
    honest: torch.Tensor,
    count: int,
    f: int,
    min_ratio: float = 2.0**-20,
) -> torch.Tensor:
    """Fang et al.'s full-knowledge attack on Krum, on updates.

    The colluders send ``−λ · s`` with ``s = sign(mean(benign))`` (the direction
    the model would move without attack), ``λ`` the largest value of
    ``λ_max, λ_max/2, …`` with which Krum — with the defence's ``f`` — selects a
    crafted row among ``honest`` and ``count`` crafted copies. ``λ_max`` is the
    paper's upper bound (with ``θ`` at the origin of update space)::

        λ_max = min_i Σ_{l ∈ Γ_i} ‖b_l − b_i‖ / ((m − 2c − 1) √d) + max_i ‖b_i‖ / √d

    (``Γ_i`` the ``m − c − 2`` benign updates nearest ``b_i``, m the number of
    updates Krum sees, c the colluders). When no λ down to ``min_ratio · λ_max``
    is selected, the smallest one tried is sent.

    Parameters
    ----------
    benign : torch.Tensor
        ``(b, d)`` every benign update the colluders know (the honest nodes' and
        their own true ones).
    honest : torch.Tensor
        ``(h, d)`` the honest updates the defence sees beside the crafted ones.
    count : int
        Number of colluders (crafted rows).
    f : int
        The defence's Byzantine budget (Krum's f).
    """
    b = benign.to(torch.float64)
    h = honest.to(torch.float64)
    d = b.shape[1]
    s = torch.sign(b.mean(dim=0))
    m = h.shape[0] + count
    dist = torch.cdist(b, b)
    near = max(min(m - count - 2, b.shape[0] - 1), 1)
    sums = dist.sort(dim=1).values[:, 1 : near + 1].sum(dim=1)
    first = float(sums.min()) / (max(m - 2 * count - 1, 1) * math.sqrt(d))
    lam_max = first + float(torch.linalg.vector_norm(b, dim=1).max()) / math.sqrt(d)
    lam = lam_max
    while True:
        crafted = -lam * s
        if lam < lam_max * min_ratio or _krum_selects_crafted(
            h, crafted.expand(count, -1), f
        ):
            return crafted
        lam /= 2


def fang_trim(
    benign: torch.Tensor,
    count: int,
    generator: torch.Generator,
    b: float = 2.0,
) -> torch.Tensor:
    """Fang et al.'s full-knowledge attack on the trimmed mean (and median).

    Per coordinate j, with ``s_j = sign(mean_j)`` of the benign updates and
    ``max_j`` / ``min_j`` their extremes: where ``s_j > 0`` every colluder sends a
    value drawn uniformly from ``[min_j / b, min_j]`` (``min_j > 0``) or
    ``[b · min_j, min_j]`` (otherwise), below every benign value; elsewhere from
    ``[max_j, b · max_j]`` (``max_j > 0``) or ``[max_j, max_j / b]``, above every
    benign value. Returns the ``(count, d)`` crafted rows.
    """
    if not b >= 1.0 or not math.isfinite(b):
        raise ValueError(f"b={b!r}; expected a finite float >= 1")
    x = benign.to(torch.float64)
    s = torch.sign(x.mean(dim=0))
    hi, lo = x.max(dim=0).values, x.min(dim=0).values
    # Interval ends per coordinate: [start, stop] (start <= stop).
    down_start = torch.where(lo > 0, lo / b, b * lo)
    up_stop = torch.where(hi > 0, b * hi, hi / b)
    start = torch.where(s > 0, down_start, hi)
    stop = torch.where(s > 0, lo, up_stop)
    u = torch.rand((count, x.shape[1]), generator=generator, dtype=torch.float64)
    return start + u * (stop - start)


def agr_tailored(
    honest: torch.Tensor,
    count: int,
    aggregate: Aggregate,
    perturbation: str = "std",
    refine: int = 12,
) -> torch.Tensor:
    """Shejwalkar & Houmansadr's AGR-tailored attack: γ against the defence's rule.

    The colluders send ``m − γ·dev`` (m the honest mean, dev the perturbation of
    :func:`~flwr_byz.attacks.min_max`) with the γ that maximises
    ``‖aggregate(honest ∪ count × crafted) − m‖``: the damage the actual rule
    lets through. γ is searched on ``s0 · 2^k`` for k = −8..6 (``s0·‖dev‖`` the
    farthest honest update's distance from m), then refined by halving steps
    around the best (the paper's search).
    """
    x = honest.to(torch.float64)
    mean = x.mean(dim=0)
    dev = _deviation(x, mean, perturbation)
    dd = float(torch.linalg.vector_norm(dev))
    if dd == 0.0:
        return mean.to(honest.dtype)
    spread = float(torch.linalg.vector_norm(x - mean, dim=1).max())
    s0 = spread / dd if spread > 0 else 1.0 / dd

    def damage(gamma: float) -> float:
        crafted = (mean - gamma * dev).expand(count, -1)
        out = aggregate(torch.cat([x, crafted])).to(torch.float64)
        value = float(torch.linalg.vector_norm(out - mean))
        return value if math.isfinite(value) else -1.0

    best_gamma, best = 0.0, damage(0.0)
    for k in range(-8, 7):
        gamma = s0 * 2.0**k
        value = damage(gamma)
        if value > best:
            best_gamma, best = gamma, value
    step = best_gamma / 2 if best_gamma > 0 else s0 * 2.0**-9
    for _ in range(refine):
        for gamma in (best_gamma + step, best_gamma - step):
            if gamma >= 0:
                value = damage(gamma)
                if value > best:
                    best_gamma, best = gamma, value
        step /= 2
    return (mean - best_gamma * dev).to(honest.dtype)


def drift_weight(server_round: int, honest_rounds: int, blend_rounds: int) -> float:
    """Pretense then drift: the attack's share of the update in ``server_round``.

    0 for rounds ``1..k`` (honest), ``(r − k) / m`` for rounds ``k+1..k+m``
    (linear blend, reaching 1 at round ``k + m``), 1 afterwards.
    """
    if server_round <= honest_rounds:
        return 0.0
    if blend_rounds <= 0:
        return 1.0
    return min((server_round - honest_rounds) / blend_rounds, 1.0)
