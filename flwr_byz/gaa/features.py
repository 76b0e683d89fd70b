"""Per-worker evidence features for the default GAA policy (pure torch)."""

from __future__ import annotations

import torch

FEATURE_NAMES: tuple[str, ...] = (
    "qv-gain",  # QV-loss decrease if Δ_i alone were applied, relative, centred
    "cos-qv-descent",  # cos(Δ_i, −∇f_B(θ_t))
    "cos-mean",  # cos(Δ_i, mean of the Δ's)
    "cos-median",  # cos(Δ_i, coordinate median of the Δ's)
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


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median of the rows (mean of the two middle ones for even n)."""
    n = x.shape[0]
    # One selection (O(n·d)) instead of a full sort per coordinate.
    lower = x.kthvalue((n + 1) // 2, dim=0).values
    if n % 2:
        return lower
    # The next order statistic: `lower` again if it occurs often enough,
    # else the smallest value above it.
    repeated = (x <= lower).sum(dim=0) >= n // 2 + 1
    above = torch.where(x > lower, x, torch.full_like(x, float("inf"))).amin(dim=0)
    return 0.5 * (lower + torch.where(repeated, lower, above))


def _median(v: torch.Tensor) -> torch.Tensor:
    return coordinate_median(v.unsqueeze(1)).squeeze(0)


def _cos(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    x64, r64 = x.double(), ref.double()
    den = x64.norm(dim=1) * r64.norm() + eps
    return (x64 @ r64 / den).float()


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
    typical = _median(raw.abs()).clamp(min=SCALE_FLOOR)
    scaled = (raw / typical).clamp(-SCALED_CLIP, SCALED_CLIP).float()
    gain = (raw - _median(raw)).clamp(-GAIN_CLIP, GAIN_CLIP).float()
    log_norm = torch.log(updates.double().norm(dim=1) + 1e-30).float()
    return torch.stack(
        [
            gain,
            _cos(updates, -qv_grad),
            _cos(updates, updates.mean(dim=0)),
            _cos(updates, coordinate_median(updates)),
            log_norm,
            scaled,
        ],
        dim=1,
    )
