"""Client and server views of tabular sources: local files, embedded datasets and
Hugging Face data.

All go through a FederatedDataset-like object (``FederatedDataset`` for Hub names,
:class:`~flwr_byz.data.local_federation.LocalFederation` for files, embedded data
or a ``DatasetDict`` in memory) with splits ``train`` (partitioned), optionally
``qv`` (the held-out region or sample) and ``test``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import datasets
import numpy as np
import torch
from flwr_datasets.partitioner import Partitioner

from flwr_byz.data.assemble import (
    check_dims,
    check_labels,
    client_view,
    draw_qv,
    standardised,
)
from flwr_byz.data.client_data import ClientData
from flwr_byz.data.columns import (
    extract_features,
    extract_labels,
    label_values,
    num_classes_of,
)
from flwr_byz.data.config import DATASET_KINDS, DataConfig
from flwr_byz.data.files import read_labeled_file, read_table_file
from flwr_byz.data.labeled_data import LabeledData
from flwr_byz.data.local_federation import LocalFederation
from flwr_byz.data.partitioning import QV_SPLIT, TRAIN_SPLIT
from flwr_byz.data.server_data import ServerData
from flwr_byz.data.splitting import train_test_indices

TEST_SPLIT = "test"


class Federation(Protocol):
    """What FederatedDataset and LocalFederation have in common here."""

    @property
    def partitioners(self) -> dict[str, Partitioner]: ...

    def load_partition(
        self, partition_id: int, split: str | None = None
    ) -> datasets.Dataset: ...

    def load_split(self, split: str) -> datasets.Dataset: ...


@dataclass(frozen=True)
class _Meta:
    label_values: tuple | None
    num_classes: int
    num_features: int


def _what(cfg: DataConfig) -> str:
    if cfg.is_files:
        return f"data-path file {cfg.data_path!r}"
    return f"dataset {cfg.dataset!r}"


def _split(fed: Federation, name: str) -> datasets.Dataset | None:
    try:
        return fed.load_split(name)
    except ValueError:
        return None


def _local_splits(cfg: DataConfig) -> dict[str, datasets.Dataset]:
    if cfg.is_embedded:
        from flwr_byz.data.embedded_source import embedded_splits

        splits = embedded_splits(cfg)
    else:
        splits = {TRAIN_SPLIT: read_table_file(cfg.data_path, cfg, "data-path")}
    if cfg.test_path:
        splits[TEST_SPLIT] = read_table_file(cfg.test_path, cfg, "test-path")
    return splits


@lru_cache(maxsize=2)
def _cached_federation(
    cfg: DataConfig, num_partitions: int, stamp: tuple
) -> tuple[Federation, _Meta]:
    if cfg.is_files or cfg.is_embedded:
        splits = _local_splits(cfg)
        fed: Federation = LocalFederation(
            datasets.DatasetDict(splits), cfg, num_partitions, _what(cfg)
        )
    else:
        from flwr_byz.data.huggingface import hub_federation

        kwargs = {}
        if cfg.data_path:  # local files through a packaged builder ("parquet", ...)
            files = {TRAIN_SPLIT: cfg.data_path}
            if cfg.test_path:
                files[TEST_SPLIT] = cfg.test_path
            kwargs["data_files"] = files
        fed = hub_federation(cfg, num_partitions, **kwargs)
        try:
            return fed, describe(fed, cfg)
        except (OSError, datasets.exceptions.DatasetNotFoundError) as err:
            # ConnectionError / FileNotFoundError are OSErrors: unknown name,
            # no network, or a missing data file.
            raise ValueError(
                f"run config 'dataset' = {cfg.dataset!r}: could not load it as a "
                f"Hugging Face dataset ({type(err).__name__}: {err}); allowed: "
                f"{' | '.join(repr(k) for k in DATASET_KINDS)}"
            ) from err
    return fed, describe(fed, cfg)


def _stamp(cfg: DataConfig) -> tuple:
    # Re-read a local file when it changes between calls in one process.
    paths = [cfg.data_path, cfg.test_path] if cfg.is_files or cfg.is_embedded else []
    return tuple(
        os.stat(p).st_mtime_ns if p and os.path.exists(p) else 0 for p in paths
    )


def federation(cfg: DataConfig, num_partitions: int) -> tuple[Federation, Any]:
    """The (cached) federation of ``cfg`` and its label/shape metadata."""
    return _cached_federation(cfg, num_partitions, _stamp(cfg))


def describe(fed: Federation, cfg: DataConfig) -> _Meta:
    """Label mapping, number of classes and feature dimension of a federation."""
    train = fed.load_split(TRAIN_SPLIT)
    what = _what(cfg)
    parts = [train] + [s for s in (_split(fed, QV_SPLIT),) if s is not None]
    whole = datasets.concatenate_datasets(parts) if len(parts) > 1 else train
    values = label_values(whole, cfg, what)
    if len(whole) == 0:
        raise ValueError(f"{what} has no rows")
    num_features = extract_features(whole.select([0]), cfg, what).shape[1]
    return _Meta(values, num_classes_of(whole, cfg, values), num_features)


def _labeled(
    ds: datasets.Dataset, cfg: DataConfig, meta: _Meta, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    x = extract_features(ds, cfg, what)
    y = extract_labels(ds, cfg, meta.label_values, what)
    check_dims(x, meta.num_features, what)
    check_labels(y, meta.num_classes, what)
    return x, y


def _check_count(fed: Federation, cfg: DataConfig, num_partitions: int) -> None:
    have = fed.partitioners[TRAIN_SPLIT].num_partitions
    if have != num_partitions:
        held = (
            " (after holding out the QV region)"
            if cfg.qv_kind
            in (
                "held-out-region",
                "region",
            )
            else ""
        )
        raise ValueError(
            f"run config 'partition-by' = {cfg.partition_by!r}: {_what(cfg)} has "
            f"{have} client regions{held} but the federation has {num_partitions} "
            "partitions; they must match (one client per region)"
        )


def _partition_name(fed: Federation, cfg: DataConfig, partition_id: int) -> str:
    if cfg.partitioning != "natural":
        return f"partition {partition_id}"
    natural = fed.partitioners[TRAIN_SPLIT].partition_id_to_natural_id
    return f"partition {partition_id} (region {natural[partition_id]!r})"


def federation_partition(
    fed: Federation, meta: Any, cfg: DataConfig, partition_id: int, num_partitions: int
) -> ClientData:
    """Client ``partition_id``'s standardised train/test split of ``fed``."""
    _check_count(fed, cfg, num_partitions)
    what = _partition_name(fed, cfg, partition_id)
    x, y = _labeled(fed.load_partition(partition_id), cfg, meta, what)
    return client_view(x, y, cfg, partition_id, what)


def _union_of_test_parts(
    fed: Federation, meta: _Meta, cfg: DataConfig, num_partitions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.test_fraction == 0:
        raise ValueError(
            f"run config 'test-fraction' = 0 and {_what(cfg)} has no test split: "
            "set 'test-fraction' > 0 or 'test-path'"
        )
    xs, ys = [], []
    for pid in range(num_partitions):
        what = _partition_name(fed, cfg, pid)
        x, y = _labeled(fed.load_partition(pid), cfg, meta, what)
        _, test_idx = train_test_indices(len(y), cfg.test_fraction, cfg.seed, pid, what)
        idx = torch.from_numpy(np.asarray(test_idx))
        xs.append(x[idx])
        ys.append(y[idx])
    return torch.cat(xs), torch.cat(ys)


def _qv_pool(
    fed: Federation, meta: _Meta, cfg: DataConfig, num_partitions: int
) -> LabeledData:
    if cfg.qv_kind in ("held-out-region", "region", "held-out-sample"):
        held = "sample" if cfg.qv_kind == "held-out-sample" else "region"
        what = f"the held-out QV {held} of {_what(cfg)}"
        return standardised(
            *_labeled(fed.load_split(QV_SPLIT), cfg, meta, what), cfg, what
        )
    if cfg.qv_kind == "partition":
        return federation_partition(
            fed, meta, cfg, int(cfg.qv_arg), num_partitions
        ).train
    if cfg.qv_kind == "split":
        ds = _split(fed, cfg.qv_arg)
        if ds is None:
            raise ValueError(
                f"run config 'qv-source' = 'split:{cfg.qv_arg}': {_what(cfg)} has no "
                f"split {cfg.qv_arg!r}"
            )
        what = f"split {cfg.qv_arg!r} of {_what(cfg)}"
        return standardised(*_labeled(ds, cfg, meta, what), cfg, what)
    what = f"qv-source file {cfg.qv_arg!r}"
    x, y = read_labeled_file(cfg.qv_arg, cfg, "qv-source", meta.label_values)
    check_dims(x, meta.num_features, what)
    check_labels(y, meta.num_classes, what)
    return standardised(x, y, cfg, what)


def federation_server_data(
    fed: Federation, meta: Any, cfg: DataConfig, num_partitions: int
) -> ServerData:
    """The server's QV set and global test set of ``fed``."""
    _check_count(fed, cfg, num_partitions)
    test_ds = _split(fed, TEST_SPLIT)
    if test_ds is not None:
        what = (
            f"test-path file {cfg.test_path!r}"
            if cfg.test_path
            else f"the test split of {_what(cfg)}"
        )
        x, y = _labeled(test_ds, cfg, meta, what)
    else:
        what = "the global test set"
        x, y = _union_of_test_parts(fed, meta, cfg, num_partitions)
    test = standardised(x, y, cfg, what)
    pool = _qv_pool(fed, meta, cfg, num_partitions)
    source = f"{cfg.qv_kind}:{cfg.qv_arg}".rstrip(":")
    qv = draw_qv(pool, cfg, source, meta.num_classes)
    return ServerData(
        qv=qv, test=test, num_features=meta.num_features, num_classes=meta.num_classes
    )


def table_partition(
    cfg: DataConfig, partition_id: int, num_partitions: int
) -> ClientData:
    """Client view for ``dataset = "files"``, an embedded or a Hugging Face name."""
    fed, meta = federation(cfg, num_partitions)
    return federation_partition(fed, meta, cfg, partition_id, num_partitions)


def table_server_data(cfg: DataConfig, num_partitions: int) -> ServerData:
    """Server view for ``dataset = "files"``, an embedded or a Hugging Face name."""
    fed, meta = federation(cfg, num_partitions)
    return federation_server_data(fed, meta, cfg, num_partitions)


def table_shape(cfg: DataConfig) -> tuple[int, int]:
    """``(num_features, num_classes)`` of a tabular source."""
    _, meta = federation(cfg, 1)
    return meta.num_features, meta.num_classes
