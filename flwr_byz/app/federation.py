"""Who is in the federation: wait for the nodes and learn their partition ids.

Before round 1 the ServerApp sends one ``query`` message to every node; the
ClientApp answers with its ``partition-id`` (and ``num-partitions`` when its node
config has it). This is experiment bookkeeping only — it lets ``results.json``
record which node ids were Byzantine — and never reaches the defence.

The answers are validated like training replies, and nothing in them can stop
the run: a malformed identity, an error reply or no answer within the query
timeout leaves that node without a partition (it still takes part); a node the
SuperLink reports gone (its notice comes from node id 1 and names the query it
answers) is left out; a reply from a node that was not asked is ignored.
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

from flwr_byz.strategy.reply_validation import (
    attribute_replies,
    instruction_destinations,
)

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
    grid: Grid,
    min_nodes: int,
    timeout: float = 120.0,
    settle: float = 3.0,
    query_timeout: float = 60.0,
) -> dict[int, NodeIdentity]:
    """Node id → what the node said about itself, for every connected node.

    Waits for at least ``min_nodes`` nodes and, when the nodes report
    ``num-partitions`` (simulation), for that many; otherwise until the set of
    connected nodes has not changed for ``settle`` seconds. Each node is asked
    once and waited for at most ``query_timeout`` seconds; the whole wait lasts at
    most ``timeout`` seconds (plus one query).
    """
    deadline = time.monotonic() + timeout
    identities: dict[int, NodeIdentity] = {}
    gone: set[int] = set()
    expected = min_nodes
    last_change = time.monotonic()
    while True:
        node_ids = sorted(grid.get_node_ids())
        new = [nid for nid in node_ids if nid not in identities and nid not in gone]
        if new:
            last_change = time.monotonic()
            answered = _query(grid, new, query_timeout)
            identities.update(answered)
            gone.update(nid for nid in new if nid not in answered)
            expected = expected_nodes(min_nodes, identities.values())
        # A node that is gone counts as answered: waiting does not bring it back.
        complete = (
            len(identities) >= min_nodes and len(identities) + len(gone) >= expected
        )
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


def identify_new_nodes(
    grid: Grid, known: Iterable[int], timeout: float
) -> dict[int, NodeIdentity]:
    """Ask the nodes connected now that are not in ``known`` who they are.

    A SuperNode that restarts comes back under a new node id; asking it again keeps
    its partition (and whether it is Byzantine) in the record.
    """
    seen = set(known)
    new = sorted(nid for nid in grid.get_node_ids() if nid not in seen)
    if not new:
        return {}
    found = _query(grid, new, timeout)
    for nid, node in found.items():
        log(INFO, "Node %d joined (partition %s)", nid, node.partition_id)
    return found


def _query(grid: Grid, node_ids: list[int], timeout: float) -> dict[int, NodeIdentity]:
    """Ask ``node_ids`` who they are; node id → identity, without the nodes the
    SuperLink reported gone."""
    messages = [
        Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY)
        for nid in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    own, absent = attribute_replies(
        replies, instruction_destinations(messages), node_ids
    )
    asked = set(node_ids)
    found: dict[int, NodeIdentity] = {}
    for reply in own:
        try:
            nid = int(reply.metadata.src_node_id)
            if nid not in asked or nid in found:
                log(WARNING, "Ignored an identity reply from node %d", nid)
                continue
            if reply.has_error() or IDENTITY_RECORD not in reply.content:
                # A node that cannot say who it is still takes part in training.
                found[nid] = NodeIdentity()
                continue
            found[nid] = parse_identity(nid, reply.content[IDENTITY_RECORD])
        except Exception:  # pylint: disable=broad-except
            log(WARNING, "Ignored an unreadable identity reply", exc_info=True)
    for nid, reason in absent.items():
        log(
            WARNING,
            "Node %d is gone (%s): it is not counted in the federation",
            nid,
            reason.name,
        )
    for nid in node_ids:
        if nid not in found and nid not in absent:
            log(
                WARNING,
                "Node %d did not answer the identity query within %g s; it takes "
                "part without a partition id in the record",
                nid,
                timeout,
            )
            found[nid] = NodeIdentity()
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
