"""An in-process Grid that runs this repository's ClientApp (fast end-to-end runs).

Each node is a partition of the generated data with a Context of its own; messages
are answered by calling the ClientApp exactly as a SuperNode would, one after the
other. Node ids are whatever the test gives, so a "restarted federation" is just
another set of ids for the same partitions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, Metadata, RecordDict
from strategy_helpers import StaticGrid, server_identity

from clients.client_app import app as client_app
from flwr_byz.app import client_run
from flwr_byz.app.config import check_run_config
from flwr_byz.app.server_run import run_server


class InProcessGrid(StaticGrid):
    """A federation of ``partitions`` (node id → partition id) in this process."""

    def __init__(self, partitions: Mapping[int, int], run_config: Mapping[str, Any]):
        super().__init__(partitions)
        self.partitions = dict(partitions)
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": pid, "num-partitions": len(partitions)},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for nid, pid in self.partitions.items()
        }
        self.sent: list[tuple[str, int, int]] = []  # (type, node, server-round)
        self._count = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            self._count += 1
            dst = msg.metadata.dst_node_id
            delivered = Message(
                content=msg.content,
                metadata=Metadata(
                    run_id=1,
                    message_id=f"m{self._count}",
                    src_node_id=1,
                    dst_node_id=dst,
                    reply_to_message_id="",
                    group_id=msg.metadata.group_id,
                    created_at=time.time(),
                    ttl=3600.0,
                    message_type=msg.metadata.message_type,
                ),
            )
            rnd = -1
            for record in msg.content.config_records.values():
                rnd = int(record.get("server-round", rnd))
            self.sent.append((msg.metadata.message_type, dst, rnd))
            replies.append(client_app(delivered, self.contexts[dst]))
        return replies


def run_gaa_in_process(overrides: Mapping[str, Any], output_dir) -> dict:
    """The app's run (``run_server``) of GAA, seed 0 on the CPU unless
    ``overrides`` says otherwise, on 10 in-process nodes (ids 100–109,
    partitions 0–9); returns what ``results.json`` holds."""
    cfg = check_run_config(
        {"strategy": "gaa", "seed": 0, "device": "cpu", **overrides}
        | {"output-dir": str(output_dir)}
    )
    client_run.clear_caches()
    grid = InProcessGrid({100 + p: p for p in range(10)}, cfg)
    with server_identity():
        return run_server(grid, cfg)
