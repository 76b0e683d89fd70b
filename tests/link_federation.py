"""A real Flower LinkState and InMemoryGrid with scripted nodes (fast, no processes).

The strategy under test talks to Flower's own :class:`InMemoryGrid` over Flower's
own :class:`InMemoryLinkState`, exactly as in a simulation; only the nodes are
scripted: each is a thread that pulls its instructions from the LinkState and
stores a reply there, or stays silent, or "dies" (the LinkState marks it offline,
as the SuperLink does when heartbeats stop). The SuperLink's own error replies for
an offline node (``src_node_id`` 1, ``NODE_UNAVAILABLE``) therefore come from
Flower's code, not from this file.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from uuid import uuid4

from flwr.app import Message, MetricRecord, RecordDict
from flwr.common.constant import (
    HEARTBEAT_INTERVAL_INF,
    NOOP_ACCOUNT_NAME,
    NOOP_FLWR_AID,
    RUN_ID_NUM_BYTES,
    SUPERLINK_NODE_ID,
    TASK_ID_NUM_BYTES,
)
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

#: A node's answer to an instruction: a reply Message, or None to stay silent.
Behaviour = Callable[[Message], Message | None]


@dataclass
class LinkFederation:
    """A LinkState, an InMemoryGrid on it and ``num_nodes`` scripted nodes.

    Use as a context manager: each node (registered before entering) is served by
    its own thread, stopped and joined on exit.

    Parameters
    ----------
    num_nodes : int
        Nodes registered (online) before the grid is used.
    behaviour : Behaviour
        Default answer of every node; :attr:`behaviours` overrides it per node id.
    pull_interval : float
        The grid's polling interval.
    """

    num_nodes: int
    behaviour: Behaviour
    pull_interval: float = 0.05
    behaviours: dict[int, Behaviour] = field(default_factory=dict)
    #: node id -> instructions it received (message types), in order.
    received: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        self.state = cast(InMemoryLinkState, self.state_factory.state())
        run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
        self.run = Run.create_empty(run_id=run_id)
        self.run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
        self.run.federation_id = NOOP_FEDERATION_ID
        self.state.run_ids[run_id] = RunRecord(run=self.run)
        self.state.task_store[self.run.primary_task_id] = Task(
            task_id=self.run.primary_task_id, run_id=run_id
        )
        self.grid = InMemoryGrid(self.state_factory, pull_interval=self.pull_interval)
        self.grid.set_run(self.run)
        self.node_ids = [self.add_node() for _ in range(self.num_nodes)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._saved_identity: tuple | None = None

    def add_node(self) -> int:
        """Register one more online node; return its id."""
        node_id = self.state.create_node(
            NOOP_FLWR_AID,
            NOOP_ACCOUNT_NAME,
            secrets.token_bytes(32),
            heartbeat_interval=HEARTBEAT_INTERVAL_INF,
        )
        self.state.acknowledge_node_heartbeat(
            node_id=node_id, heartbeat_interval=HEARTBEAT_INTERVAL_INF
        )
        self.received[node_id] = []
        return node_id

    def join(self) -> int:
        """A node that connects during the run (served from now on); its id."""
        node_id = self.add_node()
        self.node_ids.append(node_id)
        thread = threading.Thread(
            target=self._serve, args=(node_id,), name=f"node-{node_id}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        return node_id

    def kill(self, node_id: int) -> None:
        """The node stops answering and the LinkState marks it offline."""
        self.behaviours[node_id] = silent
        self.state.deactivate_node(node_id)

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> LinkFederation:
        # A ServerApp process has this identity; Message() reads it.
        self._saved_identity = (
            TaskIdentity._run_id,
            TaskIdentity._node_id,
            TaskIdentity._task_id,
        )
        TaskIdentity.run_id = self.run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = int(self.run.primary_task_id)
        for node_id in self.node_ids:  # one thread per node: a slow one blocks no other
            thread = threading.Thread(
                target=self._serve, args=(node_id,), name=f"node-{node_id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self._threads), "node thread left behind"
        if self._saved_identity is not None:
            (
                TaskIdentity._run_id,
                TaskIdentity._node_id,
                TaskIdentity._task_id,
            ) = self._saved_identity

    def _serve(self, node_id: int) -> None:
        while not self._stop.is_set():
            if node_id in self.state.get_nodes(self.run.run_id):  # offline: no pulls
                for ins in self.state.get_message_ins(node_id=node_id, limit=1):
                    self.received[node_id].append(ins.metadata.message_type)
                    answer = self.behaviours.get(node_id, self.behaviour)(ins)
                    if answer is not None:
                        answer.metadata.__dict__["_message_id"] = str(uuid4())
                        self.state.store_message_res(answer)
            self._stop.wait(0.01)


def silent(_ins: Message) -> None:
    """Never answer."""
    return None


def echo(ins: Message) -> Message:
    """A node that trains nothing: it sends the model back (train) or a metric."""
    content = RecordDict({"metrics": MetricRecord({"num-examples": 1})})
    for key, record in ins.content.array_records.items():
        if ins.metadata.message_type == "train":
            content[key] = record
    return Message(content, reply_to=ins)


def _round(ins: Message) -> int:
    return int(next(iter(ins.content.config_records.values()))["server-round"])


def dies_in_round(
    fed: LinkFederation,
    node_id: int,
    server_round: int,
    answer: Behaviour | None = None,
) -> Behaviour:
    """Answer like ``answer`` (default :func:`echo`) until the train instruction of
    ``server_round`` arrives; then die (the LinkState marks the node offline)
    without answering."""

    def behaviour(ins: Message) -> Message | None:
        if ins.metadata.message_type == "train" and _round(ins) >= server_round:
            fed.kill(node_id)
            return None
        return (answer or echo)(ins)

    return behaviour
