"""flwr-datasets partitioners and the region hold-out, as FederatedDataset uses them."""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
)

from flwr_byz.data.config import DataConfig

#: Split that receives the held-out QV region (added by :func:`hold_out_region`).
QV_SPLIT = "qv"
TRAIN_SPLIT = "train"


def make_partitioner(cfg: DataConfig, num_partitions: int) -> Partitioner:
    """The flwr-datasets partitioner for ``partitioning``.

    ``natural``: ``NaturalIdPartitioner(partition_by)``; ``iid``:
    ``IidPartitioner`` (contiguous shards of the shuffled data); ``dirichlet``:
    ``DirichletPartitioner`` over the label column with ``dirichlet-alpha``
    (self-balancing, seeded; tiny partitions are reported by the loaders).
    """
    if cfg.partitioning == "natural":
        return NaturalIdPartitioner(partition_by=cfg.partition_by)
    if cfg.partitioning == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by=cfg.label_column,
        alpha=cfg.dirichlet_alpha,
        min_partition_size=0,
        self_balancing=True,
        seed=cfg.seed,
    )


def _region_strings(ds: datasets.Dataset, column: str) -> np.ndarray:
    values = ds.select_columns([column]).with_format("arrow")[:].column(column)
    return np.array([str(v) for v in values.to_pylist()], dtype=object)


def held_out_value(ds: datasets.Dataset, cfg: DataConfig, what: str) -> str | None:
    """The region value (as a string) that ``qv-source`` holds out, if any.

    ``held-out-region`` holds out the last region in sorted order (the order
    ``NaturalIdPartitioner`` numbers regions in); ``region:<value>`` that one.
    """
    if cfg.partitioning != "natural" or cfg.qv_kind not in (
        "held-out-region",
        "region",
    ):
        return None
    check_region_column(ds, cfg, what)
    regions = sorted(ds.unique(cfg.partition_by))
    if len(regions) < 2:
        raise ValueError(
            f"run config 'partition-by' = {cfg.partition_by!r}: {what} has "
            f"{len(regions)} region(s); holding one out for the QV set needs >= 2"
        )
    if cfg.qv_kind == "held-out-region":
        return str(regions[-1])
    names = [str(r) for r in regions]
    if cfg.qv_arg not in names:
        raise ValueError(
            f"run config 'qv-source' = 'region:{cfg.qv_arg}' is invalid; allowed "
            f"regions of column {cfg.partition_by!r}: {names[:20]}"
        )
    return cfg.qv_arg


def check_region_column(ds: datasets.Dataset, cfg: DataConfig, what: str) -> None:
    """Raise ValueError naming ``partition-by`` if the region column is missing."""
    if cfg.partition_by not in ds.column_names:
        raise ValueError(
            f"run config 'partition-by' = {cfg.partition_by!r}: column not found in "
            f"{what}; available columns: {ds.column_names}"
        )


def hold_out_region(
    cfg: DataConfig, what: str
) -> Callable[[datasets.DatasetDict], datasets.DatasetDict]:
    """A FederatedDataset preprocessor moving the held-out region to split ``qv``."""

    def preprocess(dd: datasets.DatasetDict) -> datasets.DatasetDict:
        train = dd[TRAIN_SPLIT]
        if cfg.partitioning == "natural":
            check_region_column(train, cfg, what)
        held = held_out_value(train, cfg, what)
        if held is None:
            return dd
        regions = _region_strings(train, cfg.partition_by)
        out = dict(dd)
        out[TRAIN_SPLIT] = train.select(np.nonzero(regions != held)[0])
        out[QV_SPLIT] = train.select(np.nonzero(regions == held)[0])
        return datasets.DatasetDict(out)

    return preprocess
