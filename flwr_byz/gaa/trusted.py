"""A worker the server runs on its own data (Justinian's GAAvernor §7, Assumption 2)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .qv import LossFn, QVKeys, QVObjective, qv_tensors


class TrustedWorker:
    """An always-honest update computed by the server from its own data.

    It gives GAA one worker that can never be Byzantine, so credit always has
    somewhere safe to go (the paper's Assumption 2). Its update is
    ``Δ_s = θ' − θ_t`` after ``steps`` plain SGD steps of size ``lr`` on
    mini-batches of the trusted data — set them like the clients' local
    training so that Δ_s is on the same scale as the clients' updates.

    Layers with running statistics (BatchNorm) train as on a client in
    ``train`` mode: each step normalises with its batch's statistics and
    moves the running statistics, which are part of Δ_s like a client's
    reply. Every other module stays in ``eval`` mode (no dropout), so Δ_s
    depends only on θ_t and the generator. Integer buffers (BatchNorm's
    ``num_batches_tracked``) are not in the flat vector.

    Parameters
    ----------
    model_factory : Callable[[], torch.nn.Module]
        Same factory as the QV objective's.
    data : see :func:`flwr_byz.gaa.qv.qv_tensors`
        The server's own labelled data.
    lr : float
        Local learning rate.
    steps : int
        Local SGD steps per round.
    batch_size : int or None
        Mini-batch size (drawn with the agent's generator); ``None`` = all data.
    loss : callable or None
        Training loss; cross-entropy when ``None``.
    device : str or torch.device
        Where it trains.
    keys : tuple or None
        ``(input_key, label_key)`` of dict samples or batches in ``data``
        (see :func:`flwr_byz.gaa.qv.qv_tensors`).
    """

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        data: Any,
        lr: float = 0.05,
        steps: int = 1,
        batch_size: int | None = None,
        loss: LossFn | None = None,
        device: str | torch.device = "cpu",
        keys: QVKeys | None = None,
    ) -> None:
        if lr <= 0 or steps < 1:
            raise ValueError(
                f"trusted worker: need trusted_lr > 0 and trusted_steps >= 1, got "
                f"lr={lr}, steps={steps}"
            )
        self.x, self.y = qv_tensors(data, keys)
        self.objective = QVObjective(model_factory, (self.x, self.y), loss, device)
        self.lr, self.steps, self.batch_size = lr, steps, batch_size

    def update(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The trusted update Δ_s from θ_t (``(d,)``, detached)."""
        obj = self.objective
        w = theta.detach().clone()
        m = obj.x.shape[0]
        for _ in range(self.steps):
            if self.batch_size is None or self.batch_size >= m:
                x, y = obj.x, obj.y
            else:
                idx = torch.randperm(m, generator=generator)[: self.batch_size]
                idx = idx.to(obj.x.device)
                x, y = obj.x[idx], obj.y[idx]
            w = w.requires_grad_(True)
            state = obj.unflatten(w)
            # Own copies of every buffer: train-mode BatchNorm updates them in place.
            for key in (*obj.buffer_keys, *obj.fixed):
                state[key] = state[key].clone()
            with _running_stats_training(obj.model):
                out = torch.func.functional_call(obj.model, state, (x,))
            (g,) = torch.autograd.grad(obj.loss_fn(out, y), w)
            w = (w - self.lr * g).detach()  # 0 gradient on buffer coordinates
            if obj.buffer_keys:
                w[obj.buffer_mask] = torch.cat(
                    [state[k].reshape(-1) for k in obj.buffer_keys]
                ).to(w.dtype)
        return w - theta.detach()


@contextlib.contextmanager
def _running_stats_training(model: nn.Module) -> Iterator[None]:
    """Put the modules that keep running statistics in train mode, then back."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)
