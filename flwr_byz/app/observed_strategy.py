"""A strategy wrapper that hands each round's train metrics to an observer.

The experiment harness needs the decisions (rejected / removed / selected nodes,
credits) of every round as it happens, to flush ``results.json`` per round; the
strategy itself must not know it is being watched, and may itself be wrapped
(e.g. by a server-side attack), so this wraps from the outside.

It also sees, for any strategy (Flower's ``FedAvg`` included), which sampled
nodes never answered a training round and why, and bounds the wait for nodes of
a strategy that samples with Flower's own ``sample_nodes`` (which would wait
forever for a node that died).

It stops the run (:class:`~flwr_byz.configuration_errors.ClientConfigurationError`)
at the first training round in which every reply is ``byzantine_mod``'s
configuration error, whatever strategy it wraps: no round of such a run could
ever aggregate.

It also lets a resumed run go on with the round numbers of the run it continues:
Flower's ``Strategy.start`` always counts from 1, so the wrapper adds
``round_offset`` to every round number it passes on (the ``server-round`` the
clients see, which seeds their batches, included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flwr_byz.configuration_errors import stop_on_configuration_errors
from flwr_byz.strategy.layer_state import (
    NodeIdMap,
    load_tagged_state,
    tagged_state,
)
from flwr_byz.strategy.reply_validation import (
    attribute_replies,
    instruction_destinations,
)
from flwr_byz.strategy.round_report import MissingReason
from flwr_byz.strategy.sampling import NodeWaitGrid

#: ``on_train(server_round, metrics, seconds, missing, aggregate_seconds)``.
TrainObserver = Callable[
    [int, MetricRecord | None, float, dict[int, MissingReason], float], None
]


class ObservedStrategy(Strategy):
    """Delegate everything to ``strategy``; report each ``aggregate_train``.

    Parameters
    ----------
    strategy : Strategy
        The strategy that decides.
    on_train : TrainObserver
        Called after every ``aggregate_train`` with the server round, the returned
        MetricRecord, the seconds from ``configure_train`` to the end of
        aggregation (client training included), for every sampled node
        without a reply of its own, why (node id -> :class:`MissingReason`),
        and the seconds of the strategy's own ``aggregate_train``.
    order_key : Callable[[int], object] | None
        Sort key on node ids applied to the replies before aggregation and to
        the node list the strategy samples from. Replies arrive in completion
        order and a SuperLink lists nodes in no fixed order, under ids that
        change from run to run; a fixed order makes float sums and the seeded
        sample of ``fraction-train < 1``, and so whole runs, reproducible.
    on_configure : Callable[[int, Grid], None] | None
        Called with the server round and the grid before each round is
        configured (e.g. to identify nodes that joined since the last round).
    node_wait_timeout : float | None
        When set, the grid handed to ``configure_*`` stops answering
        ``get_node_ids`` (raises
        :class:`~flwr_byz.strategy.sampling.NotEnoughNodesError`) once the
        strategy has waited that many seconds for nodes.

    Attributes
    ----------
    round_offset : int
        Added to every round number passed to ``strategy`` and ``on_train``
        (0: Flower's numbering). A run resumed after round k of an episode plays
        the remaining rounds with ``round_offset = k``.
    """

    def __init__(
        self,
        strategy: Strategy,
        on_train: TrainObserver,
        order_key: Callable[[int], object] | None = None,
        node_wait_timeout: float | None = None,
        on_configure: Callable[[int, Grid], None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.on_configure = on_configure
        self.on_train = on_train
        self.order_key = order_key
        self.node_wait_timeout = node_wait_timeout
        self._round_started = 0.0
        self.round_offset = 0
        self._instructions: list[Message] = []

    def __getattr__(self, name: str) -> object:
        # Anything else (detect(), history, …) is the wrapped strategy's.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def state_dict(self) -> dict[str, Any]:
        """``{"strategy": <the wrapped strategy's tagged state>}``: the observer
        itself carries nothing between rounds (``round_offset`` is set by whoever
        starts the rounds)."""
        return {"strategy": tagged_state(self.strategy)}

    def load_state_dict(
        self, state: Mapping[str, Any], node_ids: NodeIdMap = None
    ) -> None:
        """Restore :meth:`state_dict` output into the wrapped strategy."""
        load_tagged_state(self.strategy, state["strategy"], node_ids)

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.strategy.summary()

    def _grid(self, grid: Grid) -> Grid:
        if self.node_wait_timeout is None and self.order_key is None:
            return grid
        needed = getattr(self.strategy, "min_available_nodes", None)
        return NodeWaitGrid(
            grid,
            math.inf if self.node_wait_timeout is None else self.node_wait_timeout,
            needed if isinstance(needed, int) else None,
            order_key=self.order_key,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round clock and delegate (remembering the instructions)."""
        if self.on_configure is not None:
            self.on_configure(server_round + self.round_offset, grid)
        self._round_started = time.perf_counter()
        self._instructions = list(
            self.strategy.configure_train(
                server_round + self.round_offset, arrays, config, self._grid(grid)
            )
        )
        return self._instructions

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate in a fixed reply order, then report the round."""
        server_round += self.round_offset
        replies = self._ordered(replies)
        stop_on_configuration_errors(server_round, replies)
        started = time.perf_counter()
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        done = time.perf_counter()
        missing = self.missing(replies, metrics)
        self.on_train(
            server_round, metrics, done - self._round_started, missing, done - started
        )
        return arrays, metrics

    def missing(
        self, replies: list[Message], metrics: MetricRecord | None = None
    ) -> dict[int, MissingReason]:
        """Sampled node id -> why it has no reply of its own this round.

        A flwr-byz strategy's round report already says (``missing-node-ids``,
        ``missing-reasons``): read there, not worked out a second time; for any
        other strategy (Flower's own) from the replies and the instructions.
        """
        if metrics is not None and "missing-node-ids" in metrics:
            return {
                int(node): MissingReason(int(code))
                for node, code in zip(
                    metrics["missing-node-ids"], metrics["missing-reasons"], strict=True
                )
            }
        sent = [int(m.metadata.dst_node_id) for m in self._instructions]
        own, absent = attribute_replies(
            replies, instruction_destinations(self._instructions), sent
        )
        answered = set()
        for msg in own:
            try:
                answered.add(int(msg.metadata.src_node_id))
            except Exception:  # pylint: disable=broad-except
                continue
        return {
            nid: absent.get(nid, MissingReason.TIMED_OUT)
            for nid in sent
            if nid not in answered
        }

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.strategy.configure_evaluate(
            server_round + self.round_offset, arrays, config, self._grid(grid)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate in a fixed reply order."""
        return self.strategy.aggregate_evaluate(
            server_round + self.round_offset, self._ordered(replies)
        )

    def _ordered(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        if self.order_key is not None:
            replies.sort(key=lambda msg: self.order_key(msg.metadata.src_node_id))
        return replies
