"""FLTrust: trust bootstrapped from a server-side update (Cao et al., NDSS 2021)."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.rule import Rule
from flwr_byz.aggregation.validation import check_updates

_CPU_CHUNK = 65_536
_CUDA_CHUNK = 1 << 20


def _unit_rows(
    x: torch.Tensor, scale: torch.Tensor, ok: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """Columns ``start:stop`` of the rows divided by their max-abs, in float64.

    Rows that are not ``ok`` (zero or non-finite) read as zeros.
    """
    u = x[:, start:stop].to(torch.float64) / scale[:, None]
    return torch.where(
        ok[:, None], u, torch.zeros((), dtype=torch.float64, device=u.device)
    )


def fltrust(
    x: torch.Tensor, server_update: torch.Tensor, chunk: int | None = None
) -> AggregationResult:
    """FLTrust (Cao et al., NDSS 2021): trust-weighted mean of the updates rescaled
    to the server's norm.

    With ``Δ_0`` the server's own update (computed on its root dataset with the
    clients' training recipe)::

        TS_i  = ReLU(cos(Δ_i, Δ_0))
        A     = Σ_i TS_i · (‖Δ_0‖ / ‖Δ_i‖) · Δ_i  /  Σ_i TS_i

    so an update can only contribute its *direction*, with at most the server
    update's norm: a huge-but-finite row never takes over. Cosines and norms
    are computed in float64 on rows divided by their max-abs value first, so no
    square overflows whatever the input dtype (float32 up to 3.4e38, float64
    up to 1.8e308).

    Nothing here raises for a degenerate round: a zero (or non-finite) server
    update, or zero total trust, returns a zero aggregate, all weights 0, no
    row selected and ``no_update`` saying why — the strategy then keeps the
    model unchanged.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor of client updates, any device.
    server_update : torch.Tensor
        ``(d,)`` the server's update ``Δ_0`` (same device as ``x``).
    chunk : int, optional
        Columns per float64 chunk (default 65536 on CPU, 2**20 on CUDA).

    Returns
    -------
    AggregationResult
        ``scores[i]`` = ``TS_i`` (a zero or non-finite row gets 0);
        ``weights[i]`` = ``TS_i / Σ TS`` (the aggregate is
        ``Σ weights_i · (‖Δ_0‖/‖Δ_i‖) Δ_i``); ``selected`` the rows with positive
        trust, ascending; ``removed`` the rows with zero trust, ascending.
    """
    n, d = check_updates(x, "fltrust")
    if (
        not isinstance(server_update, torch.Tensor)
        or tuple(server_update.shape) != (d,)
        or not server_update.is_floating_point()
    ):
        raise ValueError(
            f"fltrust: server_update must be a floating ({d},) tensor (one value per "
            f"column of x), got {getattr(server_update, 'shape', type(server_update))}"
        )
    if chunk is None:
        chunk = _CUDA_CHUNK if x.device.type == "cuda" else _CPU_CHUNK
    s = server_update.to(x.device)
    scale = x.detach().abs().amax(dim=1).to(torch.float64)
    ok = torch.isfinite(scale) & (scale > 0)
    scale = torch.where(ok, scale, torch.ones_like(scale))
    s_scale = float(s.detach().abs().max())
    s_ok = s_scale > 0.0 and s_scale < float("inf")  # False for NaN too
    s_scale = s_scale if s_ok else 1.0

    norms2 = torch.zeros(n, dtype=torch.float64, device=x.device)
    dots = torch.zeros(n, dtype=torch.float64, device=x.device)
    s_norm2 = 0.0
    for start in range(0, d, chunk):
        stop = min(start + chunk, d)
        u = _unit_rows(x.detach(), scale, ok, start, stop)
        su = s[start:stop].detach().to(torch.float64) / s_scale
        norms2 += (u * u).sum(dim=1)
        dots += u @ su
        s_norm2 += float(su @ su)

    zero = torch.zeros(d, dtype=x.dtype, device=x.device)
    if not s_ok or not s_norm2 > 0.0:
        return AggregationResult(
            aggregate=zero,
            selected=(),
            removed=tuple(range(n)),
            scores=(0.0,) * n,
            weights=(0.0,) * n,
            no_update="fltrust: the server update is zero or not finite, so no "
            "client update can be trusted",
        )
    u_norm = norms2.sqrt()
    cos = dots / (u_norm * (s_norm2**0.5))
    cos = torch.where(ok & torch.isfinite(cos), cos, torch.zeros_like(cos))
    trust = cos.clamp(min=0.0, max=1.0).cpu()
    total = float(trust.sum())
    scores = tuple(float(t) for t in trust)
    if not total > 0.0:
        return AggregationResult(
            aggregate=zero,
            selected=(),
            removed=tuple(range(n)),
            scores=scores,
            weights=(0.0,) * n,
            no_update="fltrust: zero total trust (no client update has a positive "
            "cosine with the server update)",
        )
    weights = trust / total
    # Coefficient of the max-abs-scaled row u_i: w_i · ‖Δ_0‖ / ‖u_i‖ (‖Δ_i‖ = m_i‖u_i‖).
    s_norm = s_scale * s_norm2**0.5
    coeff = torch.where(
        weights.to(x.device) > 0,
        weights.to(x.device) * s_norm / torch.where(ok, u_norm, 1.0),
        torch.zeros_like(u_norm),
    )
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for start in range(0, d, chunk):
        stop = min(start + chunk, d)
        out[start:stop] = (coeff @ _unit_rows(x.detach(), scale, ok, start, stop)).to(
            x.dtype
        )
    selected = tuple(i for i in range(n) if scores[i] > 0.0)
    return AggregationResult(
        aggregate=out,
        selected=selected,
        removed=tuple(i for i in range(n) if scores[i] <= 0.0),
        scores=scores,
        weights=tuple(float(w) for w in weights),
    )


RULE = Rule("fltrust", "1", fltrust, needs_server_data=True)
