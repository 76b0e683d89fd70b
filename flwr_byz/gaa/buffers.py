"""A model's float buffers (BatchNorm running statistics): how GAA aggregates them,
and which of them must stay non-negative."""

from __future__ import annotations

import torch

#: ``state_dict`` names (last component) of running variances (BatchNorm's and
#: InstanceNorm's ``running_var``): eval-mode normalisation divides by
#: ``sqrt(running_var + eps)``, so a negative one turns every output NaN.
VARIANCE_BUFFERS = ("running_var",)


def is_variance(key: str) -> bool:
    """Whether the ``state_dict`` entry ``key`` is a running variance: a value
    that must stay >= 0 (the server step and the QV loss clamp it at 0)."""
    return key.rsplit(".", 1)[-1] in VARIANCE_BUFFERS


#: Relative tolerance on "the cumulative credit reaches one half": credits are
#: float32 softmax outputs, so equal credits need not sum to exactly 1/2.
HALF_TOL = 1e-6


def weighted_coordinate_median(
    values: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-coordinate weighted median of the rows of ``values``.

    In each column, the values sorted ascending with their row's weight: the
    lower weighted median is the first value whose cumulative weight reaches
    half the total, the upper one the first whose cumulative weight exceeds
    it; the result is their midpoint (so equal weights give numpy's median,
    the mean of the two middle values for an even count).

    The result lies between the smallest and the largest value of any set of
    rows holding more than half the weight, and a row of zero weight is
    never chosen: rows with little weight cannot move it, however large
    their values (a weighted *mean* moves by weight × value).

    Parameters
    ----------
    values : torch.Tensor
        ``(n, k)`` finite values, n >= 1.
    weights : torch.Tensor
        ``(n,)`` weights >= 0 (GAA's credits); uniform if they do not sum to
        a positive finite number. Not differentiated.

    Returns
    -------
    torch.Tensor
        ``(k,)`` medians, in the dtype of ``values``.
    """
    n, k = values.shape
    if k == 0 or n == 0:
        return values.new_zeros(k)
    w = weights.detach().to(values.device, torch.float64).clamp(min=0.0)
    total = w.sum()
    if not (torch.isfinite(total) and total > 0):
        w, total = torch.ones_like(w), torch.tensor(float(n), dtype=torch.float64)
    half, tol = 0.5 * total, HALF_TOL * total
    ordered, order = torch.sort(values.detach(), dim=0, stable=True)
    cum = torch.cumsum(w[order], dim=0)
    lower = (cum < half - tol).sum(0, keepdim=True).clamp(max=n - 1)
    upper = (cum <= half + tol).sum(0, keepdim=True).clamp(max=n - 1)
    lo = ordered.gather(0, lower).squeeze(0)
    hi = ordered.gather(0, upper).squeeze(0)
    return 0.5 * lo + 0.5 * hi  # no overflow for values near the dtype's limit
