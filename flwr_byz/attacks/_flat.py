"""A node's update ``Δ = w − θ_t`` as one float64 vector and back, through
:class:`flwr_byz.records.ModelLayout` (the strategies' flattening).

Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are not part of the update:
they pass through unchanged, as the strategies leave them out of aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from flwr_byz.records import ModelLayout


class ArrayMismatchError(ValueError):
    """Two ArrayRecords do not have the same keys, shapes and dtypes."""


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Key -> numpy array (a copy, independent of later changes to ``record``)."""
    return {key: np.array(arr.numpy(), copy=True) for key, arr in record.items()}


def float_keys(arrays: dict[str, np.ndarray]) -> list[str]:
    """Keys of the floating-point arrays, in record order."""
    return list(ModelLayout.from_arrays(arrays).float_keys)


def check_same_layout(
    sent: dict[str, np.ndarray], reply: dict[str, np.ndarray]
) -> None:
    """Raise :class:`ArrayMismatchError` unless keys, shapes and dtypes agree."""
    if list(sent) != list(reply):
        raise ArrayMismatchError(
            f"reply keys {list(reply)[:5]}... differ from the sent keys "
            f"{list(sent)[:5]}..."
        )
    for key, a in sent.items():
        b = reply[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ArrayMismatchError(
                f"array {key!r}: reply {b.dtype}{list(b.shape)} differs from the "
                f"sent {a.dtype}{list(a.shape)}"
            )


def flat_update(
    sent: dict[str, np.ndarray], reply: dict[str, np.ndarray], keys: Sequence[str]
) -> torch.Tensor:
    """``Δ = reply − sent`` over ``keys``, flattened to one float64 vector."""
    layout = _layout(sent, keys)
    if not layout.d:
        return torch.zeros(0, dtype=torch.float64)
    return torch.from_numpy(
        layout.flatten(reply, np.float64) - layout.flatten(sent, np.float64)
    )


def apply_update(
    sent: dict[str, np.ndarray],
    reply: dict[str, np.ndarray],
    keys: Sequence[str],
    delta: torch.Tensor,
) -> ArrayRecord:
    """ArrayRecord with ``sent + delta`` on ``keys`` and ``reply`` elsewhere.

    Keys, order, dtypes and shapes are those of ``reply``.
    """
    flat = delta.detach().to("cpu", torch.float64).numpy()
    layout = _layout(sent, keys)
    if flat.size != layout.d:
        raise ValueError(f"update has {flat.size} values, the arrays hold {layout.d}")
    new = layout.unflatten(layout.flatten(sent, np.float64) + flat)
    out: dict[str, Array] = {}
    for key, arr in reply.items():
        value = new[key].astype(arr.dtype) if key in new else arr
        out[key] = Array(np.ascontiguousarray(value))
    return ArrayRecord(out)


def _layout(sent: dict[str, np.ndarray], keys: Sequence[str]) -> ModelLayout:
    """The flat layout of ``sent`` restricted to ``keys`` (its float arrays)."""
    return ModelLayout.from_arrays({k: sent[k] for k in keys})
