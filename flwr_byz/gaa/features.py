"""Per-worker evidence features for the default GAA policy (pure torch)."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.coordinatewise import coordinate_median
from flwr_byz.aggregation.distances import sample_columns

FEATURE_NAMES: tuple[str, ...] = (
    "qv-gain",  # QV-loss decrease if Δ_i alone were applied, relative, centred
    "cos-qv-descent",  # cos(Δ_i, −∇f_B(θ_t))
    "cos-mean",  # cos(Δ_i, mean of the Δ's)
    "cos-median",  # cos(Δ_i, coordinate median of the Δ's), on sampled columns
    "log-norm",  # log ‖Δ_i‖ (the policy only uses differences of it)
    "qv-gain-scaled",  # QV-loss decrease of Δ_i alone ÷ the median |decrease|
)

# A relative QV change beyond ±GAIN_CLIP is "catastrophic" either way; clipping
# keeps one absurd update from dominating the policy's gradient.
GAIN_CLIP = 50.0
#: ``qv-gain-scaled`` is clipped to ±SCALED_CLIP typical gains.
SCALED_CLIP = 5.0
#: Relative QV changes below this are not magnified by ``qv-gain-scaled``: on a
#: converged model every solo step changes the QV loss by noise only.
SCALE_FLOOR = 0.01
#: Values per column chunk of :func:`row_statistics` (2 MB as float64): its
#: buffers stay that size whatever the update matrix's (2^18 is faster than 2^16
#: and 2^20 at 50 × 33,130).
_CHUNK_VALUES = 1 << 18


def _cos_median(updates: torch.Tensor) -> torch.Tensor:
    """``cos-median`` on the aggregation's column sample.

    :func:`~flwr_byz.aggregation.distances.sample_columns`: evenly spread blocks,
    1/32 of the columns, 2,048 to 8,192. A full coordinate median's per-column
    selection cost more than Flower's whole FedAvg round (17–20 vs 12 ms at 50
    clients × 33,130 parameters). The median is the median rule's own (chunked,
    several times faster than ``torch.kthvalue``). The feature weighs 0 in the
    prior (only the residual MLP may learn to use it); on 2,048 columns its
    standard error is about √((1 − cos²)/2048) ≤ 0.022.
    """
    sample = sample_columns(updates)
    ref = coordinate_median(sample).aggregate
    norms, dots = row_statistics(sample, ref.unsqueeze(0))
    return _cosines(norms, dots, ref.unsqueeze(0))[:, 0]


def vector_median(v: torch.Tensor) -> torch.Tensor:
    """Median of a 1-D tensor (mean of the two middle values for an even length).

    A sort: for the few values of one per worker it is far cheaper than the
    chunked selection of the median rule, with the same result.
    """
    s = v.sort().values
    m = s.shape[0]
    return s[m // 2] if m % 2 else 0.5 * (s[m // 2 - 1] + s[m // 2])


def row_statistics(
    x: torch.Tensor, refs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's norm and its dot products with ``refs``, accumulated in float64.

    One read of ``x`` by column chunks: only a chunk is ever converted to float64,
    so the extra memory is a few MB whatever ``x``'s size (a whole-matrix float64
    copy per statistic took twice the update matrix's memory each).

    Parameters
    ----------
    x : torch.Tensor
        ``(m, d)`` rows.
    refs : torch.Tensor
        ``(k, d)`` reference vectors.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(m,)`` float64 norms and ``(m, k)`` float64 dot products.
    """
    m, d = x.shape
    k = refs.shape[0]
    f64 = {"dtype": torch.float64, "device": x.device}
    sq = torch.zeros(m, **f64)
    dots = torch.zeros(m, k, **f64)
    step = min(d, max(64, _CHUNK_VALUES // max(m, 1)))
    # One float64 buffer for every chunk: a fresh one per chunk cost page faults.
    cols_buf, refs_buf = torch.empty(m, step, **f64), torch.empty(k, step, **f64)
    for start in range(0, d, step):
        width = min(step, d - start)
        cols = cols_buf[:, :width]
        cols.copy_(x[:, start : start + width])
        ref = refs_buf[:, :width]
        ref.copy_(refs[:, start : start + width])
        sq += torch.linalg.vector_norm(cols, dim=1).square()
        dots.addmm_(cols, ref.T)
    return sq.sqrt(), dots


def _cosines(
    norms: torch.Tensor, dots: torch.Tensor, refs: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    ref_norms = refs.double().norm(dim=1)
    return (dots / (norms[:, None] * ref_norms[None, :] + eps)).float()


def evidence_features(
    updates: torch.Tensor,
    qv_loss: torch.Tensor,
    qv_grad: torch.Tensor,
    solo_losses: torch.Tensor,
    loss_floor: float = 0.1,
) -> torch.Tensor:
    """Features of each update that predict its effect on the QV loss.

    Every feature is invariant to permuting the workers (each row depends on
    its own update and on symmetric statistics of all rows) and to the scale
    of the updates (``log-norm`` is only used through differences). None is
    standardised by the spread across workers: that
    would blow tiny differences between honest workers up to unit size and
    let the log-credit random-walk onto a few honest nodes.

    ``qv-gain-scaled`` is the one scale-free read-out of the reward: the
    relative QV-loss decrease of Δ_i alone, *not* centred (its sign says
    whether the step helps the QV set at all, which no majority can move),
    divided by the median of the absolute decreases (at least
    ``SCALE_FLOOR``), so that an update that hurts the QV set as much as a
    typical update helps it reads −1 whatever the learning rate or the stage
    of training.

    Parameters
    ----------
    updates : torch.Tensor
        ``(m, d)`` updates Δ_i.
    qv_loss : torch.Tensor
        ``f_B(θ_t)`` (0-d).
    qv_grad : torch.Tensor
        ``∇f_B(θ_t)``, shape ``(d,)``.
    solo_losses : torch.Tensor
        ``f_B(θ_t + η Δ_i)`` for each row, shape ``(m,)``; non-finite values
        are read as "catastrophic".
    loss_floor : float
        Gains are divided by ``|f_B(θ_t)| + loss_floor`` so that a QV loss
        near zero does not magnify noise.

    Returns
    -------
    torch.Tensor
        ``(m, len(FEATURE_NAMES))`` float32 features, in ``FEATURE_NAMES`` order.
    """
    f0 = float(qv_loss)
    scale = abs(f0) + loss_floor
    solo = torch.nan_to_num(
        solo_losses.double(), nan=f0 + GAIN_CLIP * scale, posinf=f0 + GAIN_CLIP * scale
    )
    raw = (f0 - solo) / scale
    typical = vector_median(raw.abs()).clamp(min=SCALE_FLOOR)
    scaled = (raw / typical).clamp(-SCALED_CLIP, SCALED_CLIP).float()
    gain = (raw - vector_median(raw)).clamp(-GAIN_CLIP, GAIN_CLIP).float()
    # The mean of finite rows is finite, but their float32 sum may not be
    # (two rows near ±3.4e38): summed in float64, it is representable again.
    mean = updates.mean(dim=0, dtype=torch.float64).to(updates.dtype)
    refs = torch.stack([-qv_grad.to(updates.dtype), mean])
    norms, dots = row_statistics(updates, refs)
    cos = _cosines(norms, dots, refs)
    log_norm = torch.log(norms + 1e-30).float()
    return torch.stack(
        [gain, cos[:, 0], cos[:, 1], _cos_median(updates), log_norm, scaled], dim=1
    )
