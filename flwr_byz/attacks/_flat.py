"""Flatten an ArrayRecord's float arrays into one vector and back (key order).

Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are not part of the update:
they pass through unchanged, as the strategies leave them out of aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


class ArrayMismatchError(ValueError):
    """Two ArrayRecords do not have the same keys, shapes and dtypes."""


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Key -> numpy array (a copy, independent of later changes to ``record``)."""
    return {key: np.array(arr.numpy(), copy=True) for key, arr in record.items()}


def float_keys(arrays: dict[str, np.ndarray]) -> list[str]:
    """Keys of the floating-point arrays, in record order."""
    return [k for k, a in arrays.items() if np.issubdtype(a.dtype, np.floating)]


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
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    parts = [
        reply[k].astype(np.float64).ravel() - sent[k].astype(np.float64).ravel()
        for k in keys
    ]
    return torch.from_numpy(np.concatenate(parts))


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
    out: dict[str, Array] = {}
    offset = 0
    key_set = set(keys)
    for key, arr in reply.items():
        if key in key_set:
            size = arr.size
            new = sent[key].astype(np.float64).ravel() + flat[offset : offset + size]
            offset += size
            out[key] = Array(
                np.ascontiguousarray(new.reshape(arr.shape).astype(arr.dtype))
            )
        else:
            out[key] = Array(np.ascontiguousarray(arr))
    if offset != flat.size:
        raise ValueError(f"update has {flat.size} values, the arrays hold {offset}")
    return ArrayRecord(out)
