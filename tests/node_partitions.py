"""Which partition each simulated SuperNode holds, asked through Flower itself.

A test's ClientApp registers :func:`identify` as its query handler; its ServerApp
calls :func:`partition_of_nodes` before training, so the test can tell the
attackers' node ids from the honest ones.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid


def identify(msg: Message, context: Context) -> Message:
    """Query handler: reply with this node's ``partition-id``."""
    pid = int(context.node_config["partition-id"])
    return Message(
        RecordDict({"identity": ConfigRecord({"partition-id": pid})}), reply_to=msg
    )


def partition_of_nodes(
    grid: Grid, num_nodes: int, timeout: float = 120.0
) -> dict[int, int]:
    """Node id → partition id of all ``num_nodes`` nodes, once they are connected."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {num_nodes} nodes connected")
        time.sleep(0.2)
    msgs = [
        Message(
            RecordDict({"config": ConfigRecord()}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    replies = grid.send_and_receive(msgs, timeout=60)
    return {
        r.metadata.src_node_id: int(r.content["identity"]["partition-id"])
        for r in replies
    }
