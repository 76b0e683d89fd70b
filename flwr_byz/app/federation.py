"""Who is in the federation: wait for the nodes and learn their partition ids.

Before round 1 the ServerApp sends one ``query`` message to every node; the
ClientApp answers with its ``partition-id`` (and ``num-partitions`` when its node
config has it). This is experiment bookkeeping only — it lets ``results.json``
record which node ids were Byzantine — and never reaches the defence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

IDENTITY_RECORD = "identity"


@dataclass(frozen=True)
class NodeIdentity:
    """What a node said about itself (experiment bookkeeping only).

    Attributes
    ----------
    partition_id : int
        Its partition (simulation), or -1 when it has none (deployment).
    num_partitions : int
        The federation size its node config states; 0 when unknown.
    byzantine : bool | None
        A deployment's explicit ``byzantine`` node-config switch; ``None`` when the
        node has none (then the run config's fraction decides by partition).
    """

    partition_id: int = -1
    num_partitions: int = 0
    byzantine: bool | None = None


def discover_nodes(
    grid: Grid, min_nodes: int, timeout: float = 120.0, settle: float = 3.0
) -> dict[int, NodeIdentity]:
    """Node id → what the node said about itself, for every connected node.

    Waits for at least ``min_nodes`` nodes and, when the nodes report
    ``num-partitions`` (simulation), for that many; otherwise until the set of
    connected nodes has not changed for ``settle`` seconds.
    """
    deadline = time.monotonic() + timeout
    identities: dict[int, NodeIdentity] = {}
    expected = min_nodes
    last_change = time.monotonic()
    while True:
        node_ids = sorted(grid.get_node_ids())
        new = [nid for nid in node_ids if nid not in identities]
        if new:
            last_change = time.monotonic()
            identities.update(_query(grid, new))
            expected = expected_nodes(min_nodes, identities.values())
        complete = len(identities) >= expected
        settled = time.monotonic() - last_change >= settle
        if complete and (expected > min_nodes or settled):
            break
        if time.monotonic() > deadline:
            if len(identities) >= min_nodes:
                log(WARNING, "Only %d of %d nodes answered", len(identities), expected)
                break
            raise RuntimeError(
                f"only {len(identities)} node(s) connected within {timeout:.0f} s; "
                f"the run needs at least {min_nodes}"
            )
        time.sleep(0.5)
    log(INFO, "Federation: %d nodes", len(identities))
    return identities


def _query(grid: Grid, node_ids: list[int]) -> dict[int, NodeIdentity]:
    messages = [
        Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY)
        for nid in node_ids
    ]
    found: dict[int, NodeIdentity] = {}
    for reply in grid.send_and_receive(messages, timeout=60):
        nid = reply.metadata.src_node_id
        if reply.has_error() or IDENTITY_RECORD not in reply.content:
            # A node that cannot say who it is still takes part in training.
            found[nid] = NodeIdentity()
            continue
        found[nid] = parse_identity(nid, reply.content[IDENTITY_RECORD])
    return found


def _count(value: object, low: int) -> int | None:
    """``value`` as an integer >= ``low`` (an integral float counts), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= low else None


def parse_identity(node_id: int, record: Mapping[str, object]) -> NodeIdentity:
    """A node's identity reply, validated like a training reply: a malformed one
    leaves that node without a partition (and is logged), it never stops the run."""
    partition = _count(record.get("partition-id", -1), -1)
    claimed = _count(record.get("num-partitions", 0), 0)
    flag = record.get("byzantine")
    if (
        partition is None
        or claimed is None
        or not isinstance(flag, (bool, int, type(None)))
    ):
        log(
            WARNING,
            "Node %d sent a malformed identity (%s); it trains without a partition "
            "id in the record",
            node_id,
            dict(record),
        )
        return NodeIdentity()
    return NodeIdentity(
        partition_id=partition,
        num_partitions=claimed,
        byzantine=None if flag is None else bool(flag),
    )


def expected_nodes(min_nodes: int, identities: Iterable[NodeIdentity]) -> int:
    """How many nodes to wait for: ``min_nodes``, or the *median* federation size
    the nodes state (one node claiming 10**6 partitions cannot stall round 1)."""
    claims = sorted(i.num_partitions for i in identities if i.num_partitions > 0)
    if not claims:
        return min_nodes
    return max(min_nodes, claims[(len(claims) - 1) // 2])
