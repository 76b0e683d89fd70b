"""Feature and label columns of a ``datasets.Dataset`` as tensors.

Features come from (in this order): the ``feature-columns`` list; else the only
image column (HF ``Image``: scaled to [0, 1], flattened channel-first, so
``d = C*H*W`` and a model can ``view(-1, C, H, W)``); else the only list/array
column; else every numeric scalar column except the label and region columns.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from flwr_byz.data.config import DataConfig


def _is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
    )


def _arrow(ds: datasets.Dataset, columns: list[str]) -> pa.Table:
    # with_format("arrow")[:] materialises the rows selected by an indices mapping.
    return ds.select_columns(columns).with_format("arrow")[:]


#: Name of the list column into which :func:`pack_feature_columns` packs scalar
#: feature columns (``datasets`` is very slow with 1000+ columns).
PACKED_COLUMN = "__features__"


def _missing(key: str, value: Any, columns: list[str], what: str) -> ValueError:
    return ValueError(
        f"run config '{key}' = {value!r}: column not found in {what}; "
        f"available columns: {columns}"
    )


def resolve_feature_columns(
    schema: pa.Schema,
    cfg: DataConfig,
    what: str,
    hf_features: datasets.Features | None = None,
) -> list[str]:
    """The feature columns of a table with ``schema`` (see the module docstring)."""
    columns = list(schema.names)
    if PACKED_COLUMN in columns:
        return [PACKED_COLUMN]
    if cfg.feature_columns:
        for c in cfg.feature_columns:
            if c not in columns:
                raise _missing(
                    "feature-columns", ",".join(cfg.feature_columns), columns, what
                )
        return list(cfg.feature_columns)
    hf_features = hf_features or {}
    candidates = [c for c in columns if c not in (cfg.label_column, cfg.partition_by)]
    images = [c for c in candidates if isinstance(hf_features.get(c), datasets.Image)]
    lists = [
        c for c in candidates if c not in images and _is_list(schema.field(c).type)
    ]
    if len(images) + len(lists) == 1:
        return images + lists
    if len(images) + len(lists) > 1:
        raise ValueError(
            f"{what} has several image/list columns {images + lists}; choose one "
            "with run config 'feature-columns'"
        )
    scalars = [
        c
        for c in candidates
        if pa.types.is_integer(schema.field(c).type)
        or pa.types.is_floating(schema.field(c).type)
    ]
    if not scalars:
        raise ValueError(
            f"{what} has no numeric feature columns besides label/region; set run "
            f"config 'feature-columns' (available columns: {columns})"
        )
    others = [c for c in candidates if c not in scalars and c not in images]
    if others:
        # A CSV column with one text cell is read as text: taking only the numeric
        # columns would silently drop a feature.
        raise ValueError(
            f"{what}: column(s) {others} are not numeric (e.g. a text cell in a "
            "feature column), so they cannot be features; fix the file, or list the "
            "feature columns in run config 'feature-columns'"
        )
    return scalars


def feature_column_names(ds: datasets.Dataset, cfg: DataConfig, what: str) -> list[str]:
    """The feature columns of ``ds`` under ``cfg`` (see the module docstring)."""
    return resolve_feature_columns(ds.data.schema, cfg, what, ds.features)


def _scalar_column(table: pa.Table, c: str, what: str) -> np.ndarray:
    t = table.schema.field(c).type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise ValueError(
            f"run config 'feature-columns': column {c!r} of {what} has type "
            f"{t}; allowed: numeric scalars or one list/image column"
        )
    return pc.cast(table.column(c), pa.float64()).to_numpy()


def pack_feature_columns(table: pa.Table, cfg: DataConfig, what: str) -> pa.Table:
    """Replace several scalar feature columns by one float64 list column.

    Wide tables (a CSV with one column per feature) become a single
    :data:`PACKED_COLUMN`; tables whose features already are one list column are
    returned unchanged.
    """
    names = resolve_feature_columns(table.schema, cfg, what)
    if len(names) == 1 and _is_list(table.schema.field(names[0]).type):
        return table
    x = np.stack([_scalar_column(table, c, what) for c in names], axis=1)
    packed = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), len(names))
    rest = table.drop_columns(names)
    return rest.append_column(PACKED_COLUMN, packed)


def _image_features(ds: datasets.Dataset, column: str, what: str) -> np.ndarray:
    arr = ds.select_columns([column]).with_format("numpy")[:][column]
    if arr.dtype == object:
        raise ValueError(
            f"{what}: images in column {column!r} have different sizes; "
            "mismatched dimensions (resize them to one size)"
        )
    if arr.ndim == 3:  # (m, H, W) grayscale
        arr = arr[:, None]
    elif arr.ndim == 4:  # (m, H, W, C) -> channel-first
        arr = arr.transpose(0, 3, 1, 2)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return arr.reshape(arr.shape[0], -1).astype(np.float64) / scale


def _list_features(col: pa.ChunkedArray, column: str, what: str) -> np.ndarray:
    arr = col.combine_chunks()
    m = len(arr)
    if arr.null_count:
        raise ValueError(f"{what}: column {column!r} has missing (null) feature rows")
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if m else 0
        if m and (lengths != width).any():
            bad = int(np.nonzero(lengths != width)[0][0])
            raise ValueError(
                f"{what}: column {column!r} has feature vectors of different lengths "
                f"(row 0: {width}, row {bad}: {int(lengths[bad])}); mismatched "
                "dimensions"
            )
    flat = pc.cast(arr.flatten(), pa.float64()).to_numpy(zero_copy_only=False)
    return flat.reshape(m, width)


def extract_features(ds: datasets.Dataset, cfg: DataConfig, what: str) -> torch.Tensor:
    """Raw ``(m, d)`` float32 features of ``ds`` (NaN for missing scalar values)."""
    names = feature_column_names(ds, cfg, what)
    if len(names) == 1 and isinstance(ds.features.get(names[0]), datasets.Image):
        x = _image_features(ds, names[0], what)
    else:
        table = _arrow(ds, names)
        parts = []
        for c in names:
            t = table.schema.field(c).type
            if _is_list(t):
                parts.append(_list_features(table.column(c), c, what))
            else:
                parts.append(_scalar_column(table, c, what)[:, None])
        x = np.concatenate(parts, axis=1) if parts else np.zeros((len(ds), 0))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def label_values(ds: datasets.Dataset, cfg: DataConfig, what: str) -> tuple | None:
    """The label mapping of the main data: ``None`` for integer labels, else the
    sorted distinct values (label ``i`` = ``values[i]``)."""
    if cfg.label_column not in ds.column_names:
        raise _missing("label-column", cfg.label_column, ds.column_names, what)
    t = ds.data.schema.field(cfg.label_column).type
    if pa.types.is_integer(t):
        return None
    col = _arrow(ds, [cfg.label_column]).column(cfg.label_column)
    if pa.types.is_floating(t):
        v = col.to_numpy()
        if np.all(np.isfinite(v)) and np.all(v == np.round(v)):
            return None
    return tuple(sorted(set(col.drop_null().to_pylist())))


def extract_labels(
    ds: datasets.Dataset, cfg: DataConfig, values: tuple | None, what: str
) -> torch.Tensor:
    """``(m,)`` int64 labels of ``ds``, mapped through ``values`` when not integer."""
    if cfg.label_column not in ds.column_names:
        raise _missing("label-column", cfg.label_column, ds.column_names, what)
    col = _arrow(ds, [cfg.label_column]).column(cfg.label_column)
    if col.null_count:
        raise ValueError(
            f"{what}: label column {cfg.label_column!r} has missing values"
        )
    if values is None:
        t = col.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise ValueError(
                f"{what}: label column {cfg.label_column!r} has type {t} but the "
                "data's labels are integers"
            )
        v = col.to_numpy()
        if not np.all(v == np.round(v)):
            raise ValueError(
                f"{what}: label column {cfg.label_column!r} has non-integer values"
            )
        return torch.from_numpy(v.astype(np.int64))
    index = {value: i for i, value in enumerate(values)}
    raw = col.to_pylist()
    unknown = sorted({str(v) for v in raw if v not in index})
    if unknown:
        raise ValueError(
            f"{what}: label column {cfg.label_column!r} has values {unknown[:5]} "
            f"that the data file does not have (known: {list(values)[:10]})"
        )
    return torch.tensor([index[v] for v in raw], dtype=torch.int64)


#: Most classes integer labels may imply (max label + 1): one output unit each.
MAX_CLASSES = 100_000


def num_classes_of(ds: datasets.Dataset, cfg: DataConfig, values: tuple | None) -> int:
    """Number of classes: the ClassLabel size, the mapping size, or max label + 1."""
    feature = ds.features.get(cfg.label_column)
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    if values is not None:
        return len(values)
    y = extract_labels(ds, cfg, None, "the data")
    if len(y) == 0:
        raise ValueError("the data has no rows")
    if int(y.min()) < 0:
        raise ValueError(
            f"label column {cfg.label_column!r} has negative labels; integer labels "
            "must be 0..C-1"
        )
    classes = int(y.max()) + 1
    if classes > MAX_CLASSES:
        # The model's output layer has one unit per class: 1e12 would not fit.
        raise ValueError(
            f"label column {cfg.label_column!r} has integer labels up to "
            f"{int(y.max())}, i.e. {classes} classes (at most {MAX_CLASSES}); integer "
            "labels must be 0..C-1: renumber them, or store them as strings (then "
            "they are mapped to 0..C-1)"
        )
    return classes
