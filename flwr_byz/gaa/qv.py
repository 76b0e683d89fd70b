"""The quasi-validation objective f_B of a flat parameter vector."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .buffers import is_variance

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: :meth:`QVObjective.steps` evaluates this many parameters' worth of models at once
#: (16 MB of float32): 126 of the Healthcare-style model (33,130 parameters).
STEP_BLOCK_VALUES = 1 << 22


def qv_tensors(qv_set: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a QV set into one ``(x, y)`` pair of tensors.

    Parameters
    ----------
    qv_set : tuple | torch.utils.data.Dataset | torch.utils.data.DataLoader | object
        ``(x, y)`` tensors; a Dataset of ``(x, y)`` items; a DataLoader of
        ``(x, y)`` batches; or any object with ``features`` and ``labels``
        tensors (``flwr_byz.data.LabeledData``).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        Inputs stacked along dimension 0, and the targets.
    """
    if hasattr(qv_set, "features") and hasattr(qv_set, "labels"):
        x, y = qv_set.features, qv_set.labels
    elif (
        isinstance(qv_set, (tuple, list))
        and len(qv_set) == 2
        and all(isinstance(t, torch.Tensor) for t in qv_set)
    ):
        x, y = qv_set
    elif isinstance(qv_set, torch.utils.data.DataLoader):
        batches = [(b[0], b[1]) for b in qv_set]
        if not batches:
            raise ValueError("qv_set: the DataLoader yielded no batch (need >= 1)")
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
    elif isinstance(qv_set, torch.utils.data.Dataset):
        items = [qv_set[i] for i in range(len(qv_set))]  # type: ignore[arg-type]
        if not items:
            raise ValueError("qv_set: the Dataset is empty (need >= 1 sample)")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.stack([torch.as_tensor(it[1]) for it in items])
    else:
        raise ValueError(
            f"qv_set: got {type(qv_set).__name__}; allowed: an (x, y) tuple of "
            "tensors, a torch Dataset, a DataLoader, or LabeledData"
        )
    if x.shape[0] < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"qv_set: need >= 1 sample with as many targets as inputs, got "
            f"{x.shape[0]} inputs and {y.shape[0]} targets"
        )
    return x, y


class QVObjective:
    """``f_B(θ)``: the loss on the QV set of a model given as one flat vector.

    The flat vector holds the model's floating-point ``state_dict`` entries
    (parameters and float buffers) flattened in ``state_dict`` order — the
    layout of the strategy's ArrayRecord. The model is evaluated in ``eval``
    mode through :func:`torch.func.functional_call`: BatchNorm normalises with
    the running statistics held in the flat vector (the model the federation
    would deploy), never with the statistics of the small QV batch, and
    nothing is updated in place. The loss is differentiable with respect to
    the parameter coordinates and can be batched over many vectors with
    :func:`torch.func.vmap`. Float buffers (running statistics) are
    statistics, not parameters: they enter the loss detached, so the
    gradient is 0 on their coordinates (:attr:`buffer_mask`).

    Parameters
    ----------
    model_factory : Callable[[], torch.nn.Module]
        Builds the model whose ``state_dict`` matches the global weights.
    qv_set : see :func:`qv_tensors`
        The quasi-validation set B (any size >= 1).
    loss : Callable[[logits, targets], scalar] or None
        Mean loss over B; cross-entropy when ``None``.
    device : str or torch.device
        Where the QV computation runs.
    """

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        qv_set: Any,
        loss: LossFn | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model_factory().to(self.device).eval()
        x, y = qv_tensors(qv_set)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.loss_fn: LossFn = loss or nn.functional.cross_entropy
        state = self.model.state_dict()
        self.keys = [k for k, v in state.items() if torch.is_floating_point(v)]
        self.shapes = [state[k].shape for k in self.keys]
        self.numels = [state[k].numel() for k in self.keys]
        self.dim = int(sum(self.numels))
        params = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        #: Float ``state_dict`` keys that are buffers, not parameters.
        self.buffer_keys = [k for k in self.keys if k not in params]
        self._buffer_set = frozenset(self.buffer_keys)
        self._variances = [k for k in self.buffer_keys if is_variance(k)]
        #: ``(dim,)`` bool, True on the coordinates of float buffers.
        self.buffer_mask = torch.cat(
            [
                torch.full((n,), k not in params, dtype=torch.bool)
                for k, n in zip(self.keys, self.numels, strict=True)
            ]
            or [torch.zeros(0, dtype=torch.bool)]
        ).to(self.device)
        # Non-float buffers (BatchNorm counters) keep the factory's value.
        self.fixed = {k: v for k, v in state.items() if not torch.is_floating_point(v)}

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a ``(d,)`` vector into the model's float ``state_dict`` tensors.

        Views of ``flat``; those of float buffers are detached (no gradient
        flows into running statistics: ``native_batch_norm`` refuses one), and
        running variances are clamped at 0, so a model with a negative one
        (a bad buffer) still has a finite loss.
        """
        if flat.shape != (self.dim,):
            raise ValueError(
                f"flat parameters: expected shape ({self.dim},) for the model "
                f"from model_factory, got {tuple(flat.shape)}"
            )
        parts = torch.split(flat, self.numels)
        out = {
            k: p.view(s).detach() if k in self._buffer_set else p.view(s)
            for k, p, s in zip(self.keys, parts, self.shapes, strict=True)
        }
        for k in self._variances:  # a negative running variance would give NaN
            out[k] = out[k].clamp(min=0.0)
        out.update(self.fixed)
        return out

    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unflatten` (float entries, ``state_dict`` order)."""
        return torch.cat([state[k].reshape(-1).float() for k in self.keys])

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean QV loss at ``flat`` (a 0-d tensor, differentiable)."""
        out = functional_call(self.model, self.unflatten(flat), (self.x,))
        return self.loss_fn(out, self.y)

    def value_and_grad(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f_B(flat), ∇f_B(flat))``, both detached."""
        g, v = grad_and_value(self.__call__)(flat.detach())
        return v.detach(), g.detach()

    def batch(self, flats: torch.Tensor) -> torch.Tensor:
        """QV loss of every row of an ``(m, d)`` matrix, as an ``(m,)`` tensor."""
        try:
            return vmap(self.__call__)(flats)
        except RuntimeError:  # a user model or loss vmap cannot batch
            return torch.stack([self(row) for row in flats])

    def steps(
        self, flat: torch.Tensor, steps: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        """``f_B(flat + scale · steps[i])`` for every row, as an ``(m,)`` tensor.

        Batched by :meth:`batch` over blocks of rows, so the models evaluated at
        once hold a block of ``steps``, not a second copy of the whole matrix.
        """
        block = max(1, STEP_BLOCK_VALUES // max(self.dim, 1))
        return torch.cat(
            [
                self.batch(flat.unsqueeze(0) + scale * steps[i : i + block])
                for i in range(0, steps.shape[0], block)
            ]
        )
