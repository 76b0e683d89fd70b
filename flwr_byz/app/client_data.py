"""What a node trains on: its partition (simulation) or its own file (deployment),
and the adaptive-fault attacker's guess of the server's QV set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr_byz.data import (
    QV_DISTRIBUTION,
    ClientData,
    LabeledData,
    load_partition,
    load_server_data,
)

# How many samples of the QV distribution the adaptive-fault attacker is assumed to
# know (GAA §6.3.1, case A: D0 = the full 1k-sample QV pool, not the server's few).
ADAPTIVE_D0_SIZE = 1000


def load_client_data(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> ClientData:
    """This node's ``ClientData`` (train and local test split).

    Simulation: partition ``partition-id`` of ``num-partitions`` of the run config's
    dataset. Deployment: ``data-path`` in the node config points at the node's own
    file, loaded as the single partition of a ``files`` dataset.

    Raises
    ------
    ValueError
        When the node config has neither ``data-path`` nor both
        ``partition-id`` and ``num-partitions``.
    """
    if "data-path" in node_config:
        cfg = {
            **run_config,
            "dataset": "files",
            "data-path": node_config["data-path"],
            "partitioning": "iid",  # the node's whole file is its one partition
            # The node never builds the server's QV set; any valid source will do.
            "qv-source": "partition:0",
        }
        return load_partition(cfg, 0, 1)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise ValueError(
            "node config needs partition-id and num-partitions (simulation) or "
            "data-path (deployment); got keys " + ", ".join(sorted(node_config))
        )
    return load_partition(
        run_config, int(node_config["partition-id"]), int(node_config["num-partitions"])
    )


def load_adaptive_d0(run_config: Mapping[str, Any], num_partitions: int) -> LabeledData:
    """The adaptive-fault attacker's guess of the QV set (GAA §6.3.1, case A).

    ``ADAPTIVE_D0_SIZE`` samples of the QV set's distribution (the paper's full 1k
    QV pool); when the source holds fewer, the server's own QV set (the worst case
    of a leaked QV set).
    """
    num = max(num_partitions, 1)
    try:
        drawn = {**run_config, **QV_DISTRIBUTION, "qv-size": ADAPTIVE_D0_SIZE}
        return load_server_data(drawn, num).qv
    except ValueError:
        return load_server_data(run_config, num).qv
