"""Who is in the federation: wait for the nodes and learn their partition ids.

Before round 1 the ServerApp sends one ``query`` message to every node; the
ClientApp answers with its ``partition-id`` (and ``num-partitions`` when its node
config has it). This is experiment bookkeeping only — it lets ``results.json``
record which node ids were Byzantine — and never reaches the defence.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

IDENTITY_RECORD = "identity"


def discover_nodes(
    grid: Grid, min_nodes: int, timeout: float = 120.0, settle: float = 3.0
) -> dict[int, int]:
    """Node id → partition id for every connected node (−1 when it has none).

    Waits for at least ``min_nodes`` nodes and, when the nodes report
    ``num-partitions`` (simulation), for that many; otherwise until the set of
    connected nodes has not changed for ``settle`` seconds.
    """
    deadline = time.monotonic() + timeout
    identities: dict[int, int] = {}
    expected = min_nodes
    last_change = time.monotonic()
    while True:
        node_ids = sorted(grid.get_node_ids())
        new = [nid for nid in node_ids if nid not in identities]
        if new:
            last_change = time.monotonic()
            for nid, (pid, num_partitions) in _query(grid, new).items():
                identities[nid] = pid
                expected = max(expected, num_partitions)
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


def _query(grid: Grid, node_ids: list[int]) -> dict[int, tuple[int, int]]:
    messages = [
        Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY)
        for nid in node_ids
    ]
    found: dict[int, tuple[int, int]] = {}
    for reply in grid.send_and_receive(messages, timeout=60):
        nid = reply.metadata.src_node_id
        if reply.has_error() or IDENTITY_RECORD not in reply.content:
            # A node that cannot say who it is still takes part in training.
            found[nid] = (-1, 0)
            continue
        record = reply.content[IDENTITY_RECORD]
        found[nid] = (
            int(record.get("partition-id", -1)),
            int(record.get("num-partitions", 0)),
        )
    return found
