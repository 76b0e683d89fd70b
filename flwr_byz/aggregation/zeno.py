"""Zeno: suspicion-based aggregation by a stochastic descendant score.

Xie, Koyejo and Gupta, "Zeno: Distributed Stochastic Gradient Descent with
Suspicion-based Fault-tolerance", ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flwr_byz.aggregation.mean import combine_rows
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.rule import Rule
from flwr_byz.aggregation.validation import (
    check_f,
    check_updates,
    finite_non_negative,
)
from flwr_byz.validation import integer, require

#: ``(k, d)`` flat weight vectors -> ``(k,)`` losses on the server's batch.
BatchLoss = Callable[[torch.Tensor], torch.Tensor]
_CHUNK = 65_536


def _losses(loss_fn: BatchLoss, points: torch.Tensor, batched: bool) -> list[float]:
    if batched:
        out = loss_fn(points)
    else:
        out = torch.stack([torch.as_tensor(loss_fn(p)).reshape(()) for p in points])
    out = torch.as_tensor(out)
    if tuple(out.shape) != (points.shape[0],):
        raise ValueError(
            f"zeno: loss_fn must map a ({points.shape[0]}, d) batch of weight "
            f"vectors to ({points.shape[0]},) losses, got shape {tuple(out.shape)}"
        )
    return out.detach().to("cpu", torch.float64).tolist()


def squared_norms(x: torch.Tensor) -> list[float]:
    """``‖x_i‖²`` of every row in float64 without overflow of the squares.

    Each row is divided by its max-abs value before squaring; a result beyond
    float64 is ``inf`` (and a non-finite row gives NaN).
    """
    scale = x.detach().abs().amax(dim=1).to(torch.float64)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    sums = torch.zeros_like(scale)
    for start in range(0, x.shape[1], _CHUNK):
        u = x[:, start : start + _CHUNK].detach().to(torch.float64) / safe[:, None]
        sums += (u * u).sum(dim=1)
    out = []
    for m, s in zip(scale.cpu().tolist(), sums.cpu().tolist(), strict=True):
        out.append(m * m * s if m > 0 else (0.0 if m == 0 else math.nan))
    return out


def zeno(
    x: torch.Tensor,
    theta: torch.Tensor,
    loss_fn: BatchLoss,
    b: int,
    rho: float,
    gamma: float = 1.0,
    *,
    batched: bool = True,
    row_chunk: int = 32,
) -> AggregationResult:
    """Zeno (Xie et al., ICML 2019): the mean of the ``n − b`` updates with the
    highest descendant score on the server's data.

    The paper scores a candidate *gradient* ``u`` at parameters ``θ`` by
    ``f_r(θ) − f_r(θ − γ u) − ρ‖u‖²`` on a mini-batch ``f_r`` of the server's
    data. Here the rows are *updates* ``Δ_i`` (a client's local SGD gives
    ``Δ = −λ g``), so the same score reads::

        score_i = f_B(θ) − f_B(θ + γ·Δ_i) − ρ·‖Δ_i‖²

    — higher is better: the loss decrease the update buys, minus a norm
    penalty. The paper's ``(γ_paper, ρ_paper)`` on gradients are
    ``γ = γ_paper / λ`` and ``ρ = ρ_paper / λ²`` on updates (so ``γ = 1``
    evaluates the model exactly where the client's own step took it).
    The ``b`` lowest scores are discarded (``b ≥`` the number of Byzantine
    rows; any ``b ≤ n − 1`` works, a majority included); ties keep the lowest
    index; a NaN or infinite score ranks below every finite one.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of updates.
    theta : torch.Tensor
        ``(d,)`` the current model ``θ`` as a flat vector.
    loss_fn : callable
        ``f_B``: maps a ``(k, d)`` batch of flat weight vectors to their ``(k,)``
        losses on the server's batch for this round (or one ``(d,)`` vector to a
        scalar when ``batched=False``).
    b : int
        Number of updates to discard, ``0 <= b <= n − 1``.
    rho : float
        Norm penalty ``ρ >= 0`` (update units, see above).
    gamma : float
        Step ``γ > 0`` applied to each update before evaluating the loss.
    batched : bool
        Whether ``loss_fn`` accepts a batch.
    row_chunk : int
        Rows evaluated per ``loss_fn`` call.

    Returns
    -------
    AggregationResult
        ``scores`` one per row (non-finite reported as ``-inf``); ``selected``
        the ``n − b`` kept rows ascending; ``removed`` the ``b`` discarded rows
        ascending; ``weights`` ``1/(n − b)`` on the kept rows.
    """
    n, d = check_updates(x, "zeno")
    b = check_f(b, "zeno")
    RULE.require_rows(n, b)
    rho = finite_non_negative("zeno: rho", rho)
    gamma = finite_non_negative("zeno: gamma", gamma, positive=True)
    if not isinstance(theta, torch.Tensor) or tuple(theta.shape) != (d,):
        raise ValueError(
            f"zeno: theta must be a ({d},) tensor, got "
            f"{getattr(theta, 'shape', type(theta))}"
        )
    require("row_chunk", row_chunk, integer(1), owner="zeno")
    with torch.no_grad():
        base = theta.detach()
        before = _losses(loss_fn, base[None], batched)[0]
        after: list[float] = []
        for start in range(0, n, row_chunk):
            rows = x[start : start + row_chunk].detach().to(base.device, base.dtype)
            after += _losses(loss_fn, base + gamma * rows, batched)
    sq = squared_norms(x)
    scores = []
    for i in range(n):
        penalty = rho * sq[i] if rho > 0 else (0.0 if math.isfinite(sq[i]) else sq[i])
        s = before - after[i] - penalty
        scores.append(s if math.isfinite(s) else -math.inf)
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))
    kept = sorted(ranked[: n - b])
    coeffs = torch.zeros(n, dtype=torch.float64)
    coeffs[kept] = 1.0 / len(kept)
    return AggregationResult(
        aggregate=combine_rows(x, coeffs),
        selected=tuple(kept),
        removed=tuple(sorted(ranked[n - b :])),
        scores=tuple(scores),
        weights=tuple(coeffs.tolist()),
    )


RULE = Rule("zeno", "f+1", zeno, uses_f=True, needs_server_data=True)
