"""Sampling from the nodes connected now, with a bounded wait for too few.

Flower's ``sample_nodes`` waits, with no limit, until ``min_available_nodes``
nodes are connected: once a node dies for good, a strategy built with
``min_available_nodes`` = the federation's size waits forever ("3 connected
(minimum required: 4)"). Here every round samples from the nodes connected at
that moment, as ``FedAvg`` does, and waits for a floor at most ``wait_timeout``
seconds; then :class:`NotEnoughNodesError` ends the run with a message that says
so.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.supercore.run import Run

from flwr_byz.aggregation.validation import finite_non_negative

#: Seconds between two "waiting for nodes" log lines.
_LOG_EVERY = 10.0


class NotEnoughNodesError(RuntimeError):
    """Fewer nodes than a round needs stayed connected for the whole wait."""

    def __init__(self, connected: int, needed: int | None, waited: float) -> None:
        need = "" if needed is None else f"; the round needs at least {needed}"
        super().__init__(
            f"only {connected} node(s) connected after waiting {waited:g} s{need} "
            "(min-available-nodes, or the round's sample size). Ending the run: "
            "restart the missing SuperNodes, or lower min-available-nodes"
        )
        self.connected = connected
        self.needed = needed
        self.waited = waited


def check_seconds(name: str, value: float, *, positive: bool = False) -> float:
    """``value`` as a float of seconds (>= 0, or > 0 when ``positive``), else a
    ValueError naming ``name``."""
    return finite_non_negative(name, value, positive=positive)


def sample_connected(
    grid: Grid,
    fraction: float,
    min_nodes: int,
    min_available_nodes: int,
    wait_timeout: float,
) -> tuple[list[int], list[int]]:
    """Sample ``max(int(fraction · connected), min_nodes)`` of the connected nodes.

    Waits until at least ``max(min_available_nodes, sample size)`` nodes are
    connected, re-reading the connected nodes each second, for at most
    ``wait_timeout`` seconds. With enough nodes connected at once it draws
    exactly what Flower's ``FedAvg`` draws (one ``random.sample`` of the same
    list), so seeded runs repeat.

    Returns
    -------
    tuple[list[int], list[int]]
        The sampled node ids and the connected node ids.

    Raises
    ------
    NotEnoughNodesError
        When the wait ends with too few nodes connected.
    """
    start = time.monotonic()
    deadline = start + wait_timeout
    next_log = start
    while True:
        connected = list(grid.get_node_ids())
        sample_size = max(int(len(connected) * fraction), min_nodes)
        needed = max(min_available_nodes, sample_size)
        if len(connected) >= needed:
            return random.sample(connected, sample_size), connected
        now = time.monotonic()
        if now >= deadline:
            raise NotEnoughNodesError(len(connected), needed, wait_timeout)
        if now >= next_log:
            log(
                INFO,
                "Waiting for nodes to connect: %d connected (minimum required: %d); "
                "giving up in %.0f s",
                len(connected),
                needed,
                deadline - now,
            )
            next_log = now + _LOG_EVERY
        time.sleep(min(1.0, deadline - now))


class NodeWaitGrid(Grid):
    """A Grid for one ``configure_*`` call whose node listing gives up in time.

    Wraps the run's grid for a strategy that samples with Flower's own
    ``sample_nodes`` (e.g. ``FedAvg``): ``get_node_ids`` raises
    :class:`NotEnoughNodesError` once ``wait_timeout`` seconds have passed since
    this object was made, which only happens while the strategy is still waiting
    for nodes. Everything else goes to the wrapped grid.

    With an ``order_key``, the node ids are listed sorted by it. A seeded
    ``random.sample`` of the list (Flower's ``sample_nodes``, or
    :func:`sample_connected`) then draws the same nodes, in the key's terms,
    whatever ids the nodes got and in whatever order the SuperLink lists them:
    a simulation gives its nodes new random ids every run.
    """

    def __init__(
        self,
        grid: Grid,
        wait_timeout: float,
        needed: int | None = None,
        order_key: Callable[[int], Any] | None = None,
    ) -> None:
        self.grid = grid
        self.wait_timeout = wait_timeout
        self.needed = needed
        self.order_key = order_key
        self.deadline = time.monotonic() + wait_timeout

    def get_node_ids(self) -> Iterable[int]:
        """The connected node ids; raises once the wait is over."""
        node_ids = list(self.grid.get_node_ids())
        if time.monotonic() > self.deadline:
            raise NotEnoughNodesError(len(node_ids), self.needed, self.wait_timeout)
        if self.order_key is not None:
            node_ids.sort(key=self.order_key)
        return node_ids

    def set_run(self, run: Run) -> None:
        """Delegate."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """Delegate."""
        return self.grid.run

    def create_message(  # pylint: disable=too-many-arguments,R0917
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate."""
        return self.grid.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegate."""
        return self.grid.send_and_receive(messages, timeout=timeout)
