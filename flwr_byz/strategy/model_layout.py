"""Where each array of a model lives in the flat vector the aggregation rules see."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord

NUMPY_STYPE = "numpy.ndarray"


class ArrayLike(Protocol):
    """The four fields of a serialised :class:`flwr.app.Array`."""

    stype: str
    dtype: str
    shape: Any
    data: bytes


@dataclass(frozen=True)
class NpyHeader:
    """The parsed header of a ``.npy`` payload.

    Attributes
    ----------
    dtype : numpy.dtype
        Element type written in the header.
    shape : tuple[int, ...]
        Array shape written in the header.
    fortran_order : bool
        Whether the payload is in column-major order.
    offset : int
        Byte offset of the first element in the payload.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int


def parse_npy_header(data: bytes) -> NpyHeader:
    """Parse the ``.npy`` header of ``data`` without touching the payload.

    Parameters
    ----------
    data : bytes
        A buffer written by ``numpy.save`` (what :class:`flwr.app.Array` holds).

    Returns
    -------
    NpyHeader
        The header fields and the offset of the payload.

    Raises
    ------
    ValueError
        If the header is malformed or describes an object (pickled) dtype.
    """
    # CPython's BytesIO shares an initial ``bytes`` object instead of copying it.
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays are never accepted")
    return NpyHeader(dtype, tuple(int(s) for s in shape), bool(fortran_order),
                     stream.tell())


def npy_view(array: ArrayLike) -> np.ndarray:
    """Read-only, zero-copy view of the values held by a serialised array.

    Parameters
    ----------
    array : ArrayLike
        A :class:`flwr.app.Array` (or anything with ``stype``/``dtype``/
        ``shape``/``data``) serialised with ``numpy.save``.

    Returns
    -------
    numpy.ndarray
        A view of ``array.data`` with the header's dtype and shape (no copy).

    Raises
    ------
    ValueError
        If the serialisation type is not ``numpy.ndarray``, the header is
        malformed, or the byte length does not match the header.
    """
    if array.stype != NUMPY_STYPE:
        raise ValueError(f"stype {array.stype!r} is not {NUMPY_STYPE!r}")
    header = parse_npy_header(array.data)
    count = math.prod(header.shape)
    if len(array.data) != header.offset + count * header.dtype.itemsize:
        raise ValueError("payload length does not match the .npy header")
    flat = np.frombuffer(array.data, dtype=header.dtype, count=count,
                         offset=header.offset)
    order = "F" if header.fortran_order else "C"
    return flat.reshape(header.shape, order=order)


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
    def float_keys(self) -> tuple[str, ...]:
        """Keys of the arrays that take part in aggregation."""
        return tuple(k for k, o in zip(self.keys, self.offsets, strict=True) if o >= 0)

    def segments(self) -> list[tuple[int, str, int, int]]:
        """``(index, key, start, stop)`` of every float array in the flat vector."""
        out = []
        for i, key in enumerate(self.keys):
            start = self.offsets[i]
            if start >= 0:
                out.append((i, key, start, start + math.prod(self.shapes[i])))
        return out

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate the float arrays of ``arrays`` into a new float32 vector."""
        flat = np.empty(self.d, dtype=np.float32)
        for i, key, start, stop in self.segments():
            flat[start:stop].reshape(self.shapes[i])[...] = arrays[key]
        return flat

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of ``flat`` with each float array's shape, keyed like the model."""
        return {key: flat[start:stop].reshape(self.shapes[i])
                for i, key, start, stop in self.segments()}


def decode_arrayrecord(
    record: ArrayRecord,
) -> tuple[ModelLayout, dict[str, np.ndarray]]:
    """Zero-copy numpy views of every array of a (trusted) ArrayRecord.

    Parameters
    ----------
    record : ArrayRecord
        The global model the server sends.

    Returns
    -------
    tuple[ModelLayout, dict[str, numpy.ndarray]]
        Its layout and read-only views of its arrays.

    Raises
    ------
    ValueError
        If an array is not a numpy serialisation (the server's own model must be).
    """
    arrays = {}
    for key, array in record.items():
        try:
            arrays[key] = npy_view(array)
        except ValueError as err:
            raise ValueError(f"global ArrayRecord entry {key!r}: {err}") from err
    return ModelLayout.from_arrays(arrays), arrays


def encode_arrays(arrays: Mapping[str, np.ndarray | Array]) -> ArrayRecord:
    """ArrayRecord of numpy arrays (or already serialised Arrays), order kept."""
    return ArrayRecord({k: v if isinstance(v, Array) else Array(np.ascontiguousarray(v))
                        for k, v in arrays.items()})
