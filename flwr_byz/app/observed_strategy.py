"""A strategy wrapper that hands each round's train metrics to an observer.

The experiment harness needs the decisions (rejected / removed / selected nodes,
credits) of every round as it happens, to flush ``results.json`` per round; the
strategy itself must not know it is being watched, and may itself be wrapped
(e.g. by a server-side attack), so this wraps from the outside.

It also lets a resumed run go on with the round numbers of the run it continues:
Flower's ``Strategy.start`` always counts from 1, so the wrapper adds
``round_offset`` to every round number it passes on (the ``server-round`` the
clients see, which seeds their batches, included).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class ObservedStrategy(Strategy):
    """Delegate everything to ``strategy``; report each ``aggregate_train``.

    Parameters
    ----------
    strategy : Strategy
        The strategy that decides.
    on_train : Callable[[int, MetricRecord | None, float], None]
        Called after every ``aggregate_train`` with the server round, the returned
        MetricRecord and the seconds from ``configure_train`` to the end of
        aggregation (client training included).
    order_key : Callable[[int], object] | None
        Sort key on node ids applied to the replies before aggregation. Replies
        arrive in completion order; a fixed order makes float sums, and so whole
        runs, reproducible.

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
        on_train: Callable[[int, MetricRecord | None, float], None],
        order_key: Callable[[int], object] | None = None,
    ) -> None:
        self.strategy = strategy
        self.on_train = on_train
        self.order_key = order_key
        self._round_started = 0.0
        self.round_offset = 0

    def __getattr__(self, name: str) -> object:
        # Anything else (detect(), history, …) is the wrapped strategy's.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round clock and delegate."""
        self._round_started = time.perf_counter()
        return self.strategy.configure_train(
            server_round + self.round_offset, arrays, config, grid
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate in a fixed reply order, then report the round."""
        server_round += self.round_offset
        arrays, metrics = self.strategy.aggregate_train(
            server_round, self._ordered(replies)
        )
        self.on_train(server_round, metrics, time.perf_counter() - self._round_started)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.strategy.configure_evaluate(
            server_round + self.round_offset, arrays, config, grid
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
