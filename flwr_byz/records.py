"""Model records as one flat vector: the one flattening every layer shares.

:class:`ModelLayout` maps the floating-point arrays of a model (an ArrayRecord's
arrays, in key order) to one flat vector and back. The strategies flatten the
global model and write each update into a row of the ``(n, d)`` matrix with it; the
attacks compute and write back a node's update ``Δ = w − θ_t`` with it. Integer
arrays (e.g. BatchNorm counters) are not part of the vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: ConfigRecord key under which ``byzantine_mod`` tells the server, in a train
#: reply, the partition id its node holds (simulation only; diagnostics).
IDENTITY_RECORD = "flwr-byz-identity"


@dataclass(frozen=True)
class ModelLayout:
    """Keys, shapes and dtypes of a model's ArrayRecord and its flat layout.

    Floating-point arrays are concatenated, in ArrayRecord key order, into one
    flat float32 vector of length ``d``; integer arrays (e.g. BatchNorm
    counters) are not aggregated and keep the server's value.

    Attributes
    ----------
    keys : tuple[str, ...]
        All array keys, in ArrayRecord order.
    shapes : tuple[tuple[int, ...], ...]
        Shape of each array.
    dtypes : tuple[numpy.dtype, ...]
        Element type of each array.
    offsets : tuple[int, ...]
        Start of each array in the flat vector (``-1`` for non-float arrays).
    d : int
        Length of the flat vector.
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]
    d: int

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ModelLayout:
        """Build the layout of a mapping of numpy arrays (in mapping order)."""
        keys, shapes, dtypes, offsets = [], [], [], []
        d = 0
        for key, value in arrays.items():
            keys.append(key)
            shapes.append(tuple(value.shape))
            dtypes.append(value.dtype)
            if value.dtype.kind == "f":
                offsets.append(d)
                d += int(value.size)
            else:
                offsets.append(-1)
        return cls(tuple(keys), tuple(shapes), tuple(dtypes), tuple(offsets), d)

    @property
    def dtype_names(self) -> tuple[str, ...]:
        """``str`` of each dtype, as :class:`flwr.app.Array` declares it."""
        names = self.__dict__.get("_dtype_names")
        if names is None:
            names = tuple(str(dt) for dt in self.dtypes)
            object.__setattr__(self, "_dtype_names", names)
        return names

    @property
    def key_set(self) -> frozenset[str]:
        """The keys as a set (every reply's keys are compared with it)."""
        keys = self.__dict__.get("_key_set")
        if keys is None:
            keys = frozenset(self.keys)
            object.__setattr__(self, "_key_set", keys)
        return keys

    @property
    def float_keys(self) -> tuple[str, ...]:
        """Keys of the arrays that take part in aggregation."""
        return tuple(k for k, o in zip(self.keys, self.offsets, strict=True) if o >= 0)

    def segments(self) -> tuple[tuple[int, str, int, int], ...]:
        """``(index, key, start, stop)`` of every float array in the flat vector."""
        # Read for every reply of every round: computed once per layout.
        out = self.__dict__.get("_segments")
        if out is None:
            out = tuple(
                (i, key, start, start + math.prod(self.shapes[i]))
                for i, (key, start) in enumerate(
                    zip(self.keys, self.offsets, strict=True)
                )
                if start >= 0
            )
            object.__setattr__(self, "_segments", out)
        return out

    def flatten(
        self, arrays: Mapping[str, np.ndarray], dtype: np.dtype | type = np.float32
    ) -> np.ndarray:
        """Concatenate the float arrays of ``arrays`` into a new vector of
        ``dtype`` (float32 by default; the attacks work in float64)."""
        flat = np.empty(self.d, dtype=dtype)
        for i, key, start, stop in self.segments():
            flat[start:stop].reshape(self.shapes[i])[...] = arrays[key]
        return flat

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of ``flat`` with each float array's shape, keyed like the model."""
        return {
            key: flat[start:stop].reshape(self.shapes[i])
            for i, key, start, stop in self.segments()
        }
