"""The quasi-validation objective f_B of a flat parameter vector."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .buffers import is_variance

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: :meth:`QVObjective.steps` evaluates this many parameters' worth of models at once
#: (16 MB of float32): 126 of the Healthcare-style model (33,130 parameters).
STEP_BLOCK_VALUES = 1 << 22
#: Keys read as the input of a dict sample or batch (Flower's and Hugging Face's
#: datasets: ``img``, ``image``, ``pixel_values``), in no order of preference.
INPUT_KEYS = (
    "x",
    "img",
    "image",
    "images",
    "input",
    "inputs",
    "features",
    "pixel_values",
    "data",
)
#: Keys read as the target of a dict sample or batch.
LABEL_KEYS = ("y", "label", "labels", "target", "targets")
#: What a QV set may be, for error messages.
QV_FORMS = (
    "(x, y) tensors, a mapping of two columns, a Dataset (or Subset, or Hugging "
    "Face Dataset) of (x, y) or dict samples, a DataLoader of (x, y) or dict "
    "batches, or LabeledData"
)

QVKeys = tuple[str | int, str | int]


def balanced_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in which every class present in ``targets`` weighs the same.

    Sample ``i`` weighs ``1 / count(y_i)``, normalised, so on a balanced set this
    is the plain mean cross-entropy, and on a skewed one (a QV set of nine
    samples of one class and one of the other) the lone sample counts as much as
    the nine: a model that collapses onto the majority class does not look good
    to a judge that sees mostly that class. Targets that are not one class index
    per sample (soft labels, dense targets) take the plain mean.
    """
    if targets.dim() != 1 or torch.is_floating_point(targets):
        return nn.functional.cross_entropy(logits, targets)
    per_sample = nn.functional.cross_entropy(logits, targets, reduction="none")
    inverse = 1.0 / torch.bincount(targets)[targets].to(per_sample.dtype)
    return (per_sample * inverse).sum() / inverse.sum()


def check_model_factory(model_factory: Any) -> None:
    """Refuse (ValueError) anything but a class or function that builds a fresh model.

    The server keeps its own model (and a trusted worker another), built by
    calling ``model_factory()``; a model instance would be shared, and calling it
    runs its ``forward`` instead. A ``torch.nn.Module`` class whose constructor
    needs no argument, or any zero-argument callable, is accepted.
    """
    if isinstance(model_factory, nn.Module):
        name = type(model_factory).__name__
        raise ValueError(
            f"model_factory: got an instance of {name} (a torch.nn.Module); pass "
            f"what builds a fresh model instead: the class (model_factory={name}) "
            f"or a zero-argument function (model_factory=lambda: {name}(...))"
        )
    if not callable(model_factory):
        raise ValueError(
            f"model_factory: got {type(model_factory).__name__}; allowed: a "
            "torch.nn.Module class or a zero-argument function returning a fresh "
            "torch.nn.Module (model_factory=Net or model_factory=lambda: Net(...))"
        )
    try:
        signature = inspect.signature(model_factory)
    except (TypeError, ValueError):  # a builtin without a signature: try calling it
        return
    try:
        signature.bind()
    except TypeError as err:
        name = getattr(model_factory, "__name__", type(model_factory).__name__)
        raise ValueError(
            f"model_factory: {name} cannot be called without arguments ({err}); "
            f"pass a zero-argument function, e.g. model_factory=lambda: {name}(...)"
        ) from None


def _check_keys(keys: Any) -> QVKeys | None:
    if keys is None:
        return None
    if (
        isinstance(keys, (tuple, list))
        and len(keys) == 2
        and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys)
        and keys[0] != keys[1]
    ):
        return keys[0], keys[1]
    raise ValueError(
        f"qv_keys: got {keys!r}; allowed: None or two distinct keys "
        "(input, label), e.g. qv_keys=('img', 'label')"
    )


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"qv_set: {what} is a {type(value).__name__}, not a tensor ({err}); "
            "convert it to a tensor (e.g. a transform applying ToTensor())"
        ) from None


def _dict_keys(sample: Mapping[Any, Any], where: str) -> QVKeys:
    """The (input, label) keys of a dict sample, from the common key names."""
    keys = list(sample)
    inputs = [k for k in keys if k in INPUT_KEYS]
    labels = [k for k in keys if k in LABEL_KEYS]
    if len(labels) == 1 and len(inputs) == 1:
        return inputs[0], labels[0]
    if len(labels) == 1 and len(keys) == 2:
        return next(k for k in keys if k != labels[0]), labels[0]
    raise ValueError(
        f"qv_set: {where} is a dict with keys {keys}; cannot tell its input from "
        f"its label (input keys known: {list(INPUT_KEYS)}; label keys: "
        f"{list(LABEL_KEYS)}); name them with qv_keys=(input_key, label_key), e.g. "
        "qv_keys=('img', 'label')"
    )


def _pair(item: Any, keys: QVKeys | None, where: str) -> tuple[Any, Any]:
    """``(x, y)`` of one sample, batch or column mapping."""
    if keys is not None:
        try:
            return item[keys[0]], item[keys[1]]
        except (KeyError, IndexError, TypeError):
            found = (
                list(item)
                if isinstance(item, Mapping)
                else f"positions 0..{len(item) - 1}"
                if isinstance(item, (tuple, list))
                else type(item).__name__
            )
            raise ValueError(
                f"qv_keys={keys!r}: {where} has no such keys; it has {found}"
            ) from None
    if isinstance(item, Mapping):
        kx, ky = _dict_keys(item, where)
        return item[kx], item[ky]
    if isinstance(item, (tuple, list)):
        if len(item) == 2:
            return item[0], item[1]
        raise ValueError(
            f"qv_set: {where} holds {len(item)} elements; need (x, y), or name the "
            "input's and the label's positions with qv_keys, e.g. qv_keys=(0, 2)"
        )
    raise ValueError(
        f"qv_set: {where} is a {type(item).__name__}; need an (x, y) pair or a dict "
        "of input and label"
    )


def _is_dataset(qv_set: Any) -> bool:
    """A map-style dataset: a torch Dataset, or any sized, indexable collection
    that is not itself a tensor, array, sequence or mapping (Hugging Face's
    ``datasets.Dataset`` is not a torch Dataset)."""
    if isinstance(qv_set, torch.utils.data.IterableDataset):
        return False
    if isinstance(qv_set, torch.utils.data.Dataset):
        return True
    return (
        hasattr(qv_set, "__len__")
        and hasattr(qv_set, "__getitem__")
        and not isinstance(qv_set, (torch.Tensor, str, bytes, Sequence, Mapping))
        and not hasattr(qv_set, "__array__")
    )


def qv_tensors(qv_set: Any, keys: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a QV set into one ``(x, y)`` pair of tensors.

    Parameters
    ----------
    qv_set : tuple | Mapping | Dataset | DataLoader | object
        ``(x, y)`` tensors; a mapping of two columns (``{"img": x, "label":
        y}``); a map-style dataset — a torch ``Dataset`` or ``Subset``, or a
        Hugging Face ``datasets.Dataset`` in torch format or with a transform
        that returns tensors — of ``(x, y)`` or dict samples; a ``DataLoader``
        of ``(x, y)`` or dict batches (Flower's quickstarts); or any object with
        ``features`` and ``labels`` tensors (``flwr_byz.data.LabeledData``).
    keys : tuple or None
        ``(input_key, label_key)`` of dict samples or batches, or the two
        positions in tuple ones. ``None``: a pair's two elements, or the dict
        keys found among :data:`INPUT_KEYS` and :data:`LABEL_KEYS` (one of
        each, or a label key and one other key); any other dict is refused
        with the keys it holds. Unused by the tensor and LabeledData forms.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        Inputs stacked along dimension 0, and the targets.
    """
    keys = _check_keys(keys)
    if (
        hasattr(qv_set, "features")
        and hasattr(qv_set, "labels")
        and isinstance(qv_set.features, torch.Tensor)
    ):
        x, y = qv_set.features, qv_set.labels
    elif (
        isinstance(qv_set, (tuple, list))
        and len(qv_set) == 2
        and all(isinstance(t, torch.Tensor) for t in qv_set)
    ):
        x, y = qv_set
    elif isinstance(qv_set, Mapping):
        cx, cy = _pair(qv_set, keys, "the mapping")
        x, y = _as_tensor(cx, "the input column"), _as_tensor(cy, "the label column")
    elif isinstance(qv_set, torch.utils.data.DataLoader):
        xs, ys = [], []
        for i, batch in enumerate(qv_set):
            bx, by = _pair(batch, keys, f"batch {i} of the DataLoader")
            xs.append(_as_tensor(bx, f"the input of batch {i}"))
            ys.append(_as_tensor(by, f"the label of batch {i}"))
        if not xs:
            raise ValueError("qv_set: the DataLoader yielded no batch (need >= 1)")
        x, y = _cat(xs, "batches' inputs"), _cat(ys, "batches' labels")
    elif _is_dataset(qv_set):
        xs, ys = [], []
        for i in range(len(qv_set)):
            ix, iy = _pair(qv_set[i], keys, f"sample {i} of the dataset")
            xs.append(_as_tensor(ix, f"the input of sample {i}"))
            ys.append(_as_tensor(iy, f"the label of sample {i}"))
        if not xs:
            raise ValueError("qv_set: the dataset is empty (need >= 1 sample)")
        x, y = _stack(xs, "samples' inputs"), _stack(ys, "samples' labels")
    else:
        raise ValueError(f"qv_set: got {type(qv_set).__name__}; allowed: {QV_FORMS}")
    if x.dim() < 1 or y.dim() < 1 or x.shape[0] < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"qv_set: need >= 1 sample with as many targets as inputs, got inputs "
            f"of shape {tuple(x.shape)} and targets of shape {tuple(y.shape)}"
        )
    return x, y


def _cat(parts: list[torch.Tensor], what: str) -> torch.Tensor:
    try:
        return torch.cat([p if p.dim() else p.reshape(1) for p in parts])
    except RuntimeError as err:
        raise ValueError(f"qv_set: the {what} do not concatenate ({err})") from None


def _stack(parts: list[torch.Tensor], what: str) -> torch.Tensor:
    try:
        return torch.stack(parts)
    except RuntimeError as err:
        raise ValueError(f"qv_set: the {what} differ in shape ({err})") from None


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
        Builds the model whose ``state_dict`` matches the global weights: a
        ``torch.nn.Module`` class or a zero-argument function, never a model
        instance (:func:`check_model_factory`).
    qv_set : see :func:`qv_tensors`
        The quasi-validation set B (any size >= 1).
    loss : Callable[[logits, targets], scalar] or None
        Mean loss over B; when ``None``, the class-balanced cross-entropy
        (:func:`balanced_cross_entropy`): a QV set is rarely balanced, and a
        skewed judge rewards collapsing onto its majority class.
    device : str or torch.device
        Where the QV computation runs.
    qv_keys : tuple or None
        ``(input_key, label_key)`` of dict samples or batches (see
        :func:`qv_tensors`); ``None`` recognises the common key names.
    """

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        qv_set: Any,
        loss: LossFn | None = None,
        device: str | torch.device = "cpu",
        qv_keys: QVKeys | None = None,
    ) -> None:
        self.device = torch.device(device)
        check_model_factory(model_factory)
        model = model_factory()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model_factory() returned {type(model).__name__}; allowed: a "
                "torch.nn.Module"
            )
        self.model = model.to(self.device).eval()
        x, y = qv_tensors(qv_set, qv_keys)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.loss_fn: LossFn = loss or balanced_cross_entropy
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
