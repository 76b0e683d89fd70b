"""Where each array of a model lives in the flat vector the aggregation rules see."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord

from flwr_byz.records import ModelLayout

__all__ = [
    "NUMPY_STYPE",
    "ArrayLike",
    "ModelLayout",
    "NpyHeader",
    "decode_arrayrecord",
    "encode_arrays",
    "npy_view",
    "parse_npy_header",
]

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
    return NpyHeader(
        dtype, tuple(int(s) for s in shape), bool(fortran_order), stream.tell()
    )


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
    flat = np.frombuffer(
        array.data, dtype=header.dtype, count=count, offset=header.offset
    )
    order = "F" if header.fortran_order else "C"
    return flat.reshape(header.shape, order=order)


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
    return ArrayRecord(
        {
            k: v if isinstance(v, Array) else Array(np.ascontiguousarray(v))
            for k, v in arrays.items()
        }
    )
