"""The server step, functional: ``θ_{t+1} = θ_t + η · v``, ``v = μ v + A(Δ)``.

A pure, keyword-only function in the style of ``torch.optim``'s functional
``sgd``: every input is an argument, nothing is read from a strategy, and the
new momentum buffer is returned rather than stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flwr_byz.gaa.buffers import is_variance

from .finiteness import all_finite
from .model_layout import ModelLayout


@dataclass(frozen=True)
class ServerStep:
    """What :func:`server_step` produced.

    Attributes
    ----------
    theta : dict[str, numpy.ndarray] or None
        The new model's arrays in key order (integer arrays are the sent ones);
        ``None`` when the new model would not be finite (keep the old one).
    buffer : numpy.ndarray or None
        The momentum buffer ``v`` after this step (``None`` without momentum).
    """

    theta: dict[str, np.ndarray] | None
    buffer: np.ndarray | None


def server_step(
    *,
    theta: Mapping[str, np.ndarray],
    layout: ModelLayout,
    aggregate: np.ndarray,
    lr: float,
    momentum: float = 0.0,
    buffer: np.ndarray | None = None,
) -> ServerStep:
    """One server step on the global model.

    ``v = μ · buffer + aggregate`` (``v = aggregate`` on the first step or
    without momentum), ``θ_{t+1} = θ_t + lr · v``, written back per array in
    each array's own dtype. Running variances (BatchNorm's ``running_var``,
    :func:`flwr_byz.gaa.buffers.is_variance`) are clamped at 0: a negative one
    would make the model's every eval-mode output NaN.

    Parameters
    ----------
    theta : Mapping[str, numpy.ndarray]
        The sent model's arrays θ_t (not modified).
    layout : ModelLayout
        Keys, shapes and flat offsets of the float arrays in ``aggregate``.
    aggregate : numpy.ndarray
        ``(d,)`` float32 aggregate ``A(Δ)`` of the round's updates.
    lr : float
        Server learning rate η.
    momentum : float
        Server momentum μ in ``[0, 1)``; 0 = none.
    buffer : numpy.ndarray or None
        The momentum buffer of the previous step (``None`` on the first).

    Returns
    -------
    ServerStep
        The new arrays (``None`` if any would be non-finite, with the buffer
        unchanged) and the new buffer.
    """
    new_buffer = None
    with np.errstate(over="ignore", invalid="ignore"):
        if momentum > 0.0:
            if buffer is None or buffer.shape != aggregate.shape:
                new_buffer = aggregate.copy()
            else:
                new_buffer = momentum * buffer + aggregate
            step = new_buffer * np.float32(lr)
        else:
            step = aggregate * np.float32(lr) if lr != 1.0 else aggregate
        new_theta: dict[str, np.ndarray] = dict(theta)
        finite = True
        for i, key, start, stop in layout.segments():
            old = theta[key]
            new = old + step[start:stop].reshape(layout.shapes[i]).astype(
                old.dtype, copy=False
            )
            # A non-finite step makes its new values non-finite: checking
            # them checks both.
            if not all_finite(new.reshape(-1)):
                finite = False
                break
            if is_variance(key):  # BatchNorm's running_var: never below 0
                new = np.maximum(new, 0, dtype=new.dtype)
            new_theta[key] = new
    if not finite:
        return ServerStep(None, buffer)
    return ServerStep(new_theta, new_buffer)
