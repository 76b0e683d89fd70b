"""The public entry points: a client's partition, the server's data, the shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr_byz.data.client_data import ClientData
from flwr_byz.data.config import DataConfig, parse_data_config
from flwr_byz.data.generated_source import (
    generated_partition,
    generated_server_data,
)
from flwr_byz.data.server_data import ServerData
from flwr_byz.data.spec import EMBEDDED, GENERATED


def _check_partition(partition_id: int, num_partitions: int) -> None:
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int):
        raise ValueError(f"num_partitions must be an int >= 1; got {num_partitions!r}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1; got {num_partitions}")
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise ValueError(f"partition_id must be an int; got {partition_id!r}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition_id {partition_id} out of range [0, {num_partitions})"
        )


def _check_qv_partition(cfg: DataConfig, num_partitions: int) -> None:
    if cfg.qv_kind == "partition" and int(cfg.qv_arg) >= num_partitions:
        raise ValueError(
            f"run config 'qv-source' = 'partition:{cfg.qv_arg}' is invalid; allowed: "
            f"'partition:<id>' with 0 <= id < num_partitions ({num_partitions})"
        )


def load_partition(
    cfg: Mapping[str, Any], partition_id: int, num_partitions: int
) -> ClientData:
    """Load client ``partition_id``'s own data (train + local test), standardised.

    Parameters
    ----------
    cfg : Mapping[str, Any]
        Flower run config; the data keys are described in
        :mod:`flwr_byz.data.config` (missing keys take :data:`DATA_DEFAULTS`).
    partition_id : int
        This client's partition, ``0 <= partition_id < num_partitions``.
    num_partitions : int
        Number of clients in the federation.

    Returns
    -------
    ClientData
        ``train`` and ``test``, both standardised with ``train``'s statistics.

    Raises
    ------
    ValueError
        Bad configuration (naming the key), missing column, too few samples, NaN
        features, mismatched dimensions.
    """
    parsed = parse_data_config(cfg)
    _check_partition(partition_id, num_partitions)
    if parsed.is_generated:
        return generated_partition(parsed, partition_id, num_partitions)
    from flwr_byz.data.table_source import table_partition

    return table_partition(parsed, partition_id, num_partitions)


def load_server_data(cfg: Mapping[str, Any], num_partitions: int) -> ServerData:
    """Load the server's QV set and global test set.

    Parameters
    ----------
    cfg : Mapping[str, Any]
        Flower run config (see :func:`load_partition`).
    num_partitions : int
        Number of clients; for generated data the global test set is drawn from
        their regions, and ``partition:<id>`` QV sources must name one of them.

    Returns
    -------
    ServerData
        ``qv`` standardised with the statistics of its whole source pool, ``test``
        with its own.
    """
    parsed = parse_data_config(cfg)
    _check_partition(0, num_partitions)
    _check_qv_partition(parsed, num_partitions)
    if parsed.is_generated:
        return generated_server_data(parsed, num_partitions)
    from flwr_byz.data.table_source import table_server_data

    return table_server_data(parsed, num_partitions)


def dataset_shape(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """``(num_features, num_classes)`` of the configured dataset.

    Free for generated and embedded data; reads only the schema/label column of
    local files; for a Hugging Face name, the dataset's metadata (may download it
    once).

    Raises
    ------
    ValueError
        Naming the key, when the data has fewer than 2 classes (no classifier
        can be trained on it).
    """
    parsed = parse_data_config(cfg)
    if parsed.is_generated or parsed.is_embedded:
        spec = (GENERATED if parsed.is_generated else EMBEDDED)[parsed.dataset]
        return spec.num_features, spec.num_classes
    from flwr_byz.data.table_source import table_shape

    num_features, num_classes = table_shape(parsed)
    if num_classes < 2:
        where = (
            f"'data-path' = {parsed.data_path!r}"
            if parsed.is_files
            else f"'dataset' = {parsed.dataset!r}"
        )
        raise ValueError(
            f"run config {where}: its label column {parsed.label_column!r} holds "
            f"{num_classes} class; a classifier needs at least 2: use data whose "
            "labels take at least two values, or set 'label-column' to the column "
            "that holds the labels"
        )
    return num_features, num_classes
