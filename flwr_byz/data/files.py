"""Read local Parquet / CSV / NumPy ``.npz`` files into ``datasets.Dataset``.

Formats
-------
``.parquet``
    Any columns; the features may be scalar columns or one list column.
``.csv``
    A header row; one scalar column per feature.
``.npz``
    One array per column (``np.savez(path, features=X, label=y, region=r)``): a 2-D
    array is a list column (one row per sample), 1-D arrays are scalar columns;
    all arrays have the same first dimension.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets.table import InMemoryTable

from flwr_byz.data.columns import (
    extract_features,
    extract_labels,
    pack_feature_columns,
)
from flwr_byz.data.config import FILE_SUFFIXES, DataConfig

#: What can go wrong while parsing a file that exists (bytes that are not the format).
_PARSE_ERRORS = (
    OSError,
    EOFError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    pa.ArrowException,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
)
_WRITERS = {
    ".parquet": "pyarrow.parquet.write_table or DataFrame.to_parquet",
    ".csv": "DataFrame.to_csv (a header row, one column per feature)",
    ".npz": "numpy.savez with numeric arrays (no objects)",
}


def _unreadable(path: Path, key: str, suffix: str, err: Exception) -> ValueError:
    return ValueError(
        f"run config '{key}' = {str(path)!r}: the file is not a readable {suffix} file "
        f"({type(err).__name__}); write it with {_WRITERS[suffix]}"
    )


def arrays_table(arrays: Mapping[str, np.ndarray], where: str) -> pa.Table:
    """Columns from arrays: 1-D = a scalar column, 2-D = a fixed-size list column.

    ``where`` names the arrays' origin in errors (different lengths, >2-D).
    """
    lengths = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{where}: arrays have different lengths {lengths}; every "
            "array of an .npz file is one column with one entry per sample"
        )
    columns = {}
    for name, a in arrays.items():
        if a.ndim == 1:
            columns[name] = pa.array(a)
        elif a.ndim == 2:
            flat = pa.array(np.ascontiguousarray(a).reshape(-1))
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, a.shape[1])
        else:
            raise ValueError(
                f"{where}: array {name!r} has shape {a.shape}; "
                "allowed: 1-D (a column) or 2-D (a list column)"
            )
    return pa.table(columns)


def _npz_table(path: Path, key: str) -> pa.Table:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as err:  # pickled objects, or bytes numpy cannot parse
        raise _unreadable(path, key, ".npz", err) from None
    except _PARSE_ERRORS as err:
        raise _unreadable(path, key, ".npz", err) from None
    return arrays_table(arrays, f"{key} {str(path)!r}")


def table_dataset(table: pa.Table, cfg: DataConfig, what: str) -> datasets.Dataset:
    """An in-memory Dataset of ``table``, scalar feature columns packed into one.

    See :func:`flwr_byz.data.columns.pack_feature_columns`.
    """
    table = pack_feature_columns(table, cfg, what)
    # Keep everything in memory: no cache files under ~/.cache for local data.
    return datasets.Dataset(InMemoryTable(table))


def read_table_file(path: str, cfg: DataConfig, key: str) -> datasets.Dataset:
    """Read a ``.parquet``, ``.csv`` or ``.npz`` file into an in-memory Dataset.

    Scalar feature columns are packed into one list column (see
    :func:`flwr_byz.data.columns.pack_feature_columns`).

    Parameters
    ----------
    path : str
        The file.
    cfg : DataConfig
        Names the label, region and feature columns.
    key : str
        Run-config key that named the file (for error messages).

    Raises
    ------
    ValueError
        Unknown suffix, missing or unreadable file (naming ``key`` and how to
        write a readable one), malformed ``.npz``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ValueError(
            f"run config '{key}' = {path!r} is invalid; allowed: a path ending in "
            + ", ".join(FILE_SUFFIXES)
        )
    if not p.is_file():
        raise ValueError(f"run config '{key}' = {path!r}: no such file")
    if suffix == ".npz":
        table = _npz_table(p, key)
    else:
        try:
            if suffix == ".parquet":
                table = pq.read_table(p)
            else:
                table = pa.Table.from_pandas(pd.read_csv(p), preserve_index=False)
        except _PARSE_ERRORS as err:
            raise _unreadable(p, key, suffix, err) from None
    return table_dataset(table, cfg, f"{key} file {path!r}")


def read_labeled_file(
    path: str, cfg: DataConfig, key: str, label_values: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features and labels of a side file (QV or test file), columns as ``cfg``.

    ``label_values`` is the main data's label mapping (``None``: integer labels as
    given); the caller checks the label range and the feature dimension.
    """
    ds = read_table_file(path, cfg, key)
    what = f"{key} file {path!r}"
    return extract_features(ds, cfg, what), extract_labels(ds, cfg, label_values, what)
