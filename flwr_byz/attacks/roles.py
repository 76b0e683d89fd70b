"""Role schedules (GAA §3.1 role function, §5.1.2 attack patterns).

A role schedule says, for each server round ``t = 1, 2, ...``, whether a compromised
node plays Byzantine. Each schedule is a pure function of (seed, node key, round):
no hidden state, so any process (a Ray actor, a SuperNode, the server-side injector,
the experiment scorer) replays the same sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flwr_byz.seeding import numpy_stream

# Stream tags keep the random draws of different purposes independent.
_TAG_FLIP = 0x524F4C45  # "ROLE"
_TAG_INITIAL = 0x494E4954  # "INIT"


def _stream(seed: int, node: int, tag: int) -> np.random.Generator:
    """A random stream that is a pure function of (seed, node, tag)."""
    return numpy_stream(seed, node, tag)


@dataclass(frozen=True)
class StaticRole:
    """Byzantine in every round (GAA's static attack)."""

    def is_byzantine(self, server_round: int) -> bool:
        """Whether the node plays Byzantine in ``server_round`` (1-based)."""
        return True


@dataclass(frozen=True)
class PretenseRole:
    """Honest for the first ``rounds`` rounds, Byzantine from round ``rounds + 1`` on.

    Parameters
    ----------
    rounds : int
        The pretense length L >= 0 (``L = 0`` is the static attack).
    """

    rounds: int

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(
                f"pretense-rounds={self.rounds} is negative; valid values: "
                "integers >= 0"
            )

    def is_byzantine(self, server_round: int) -> bool:
        """Whether the node plays Byzantine in ``server_round`` (1-based)."""
        return server_round > self.rounds


@dataclass(frozen=True)
class RandomizedRole:
    """Initial role, then every ``period`` rounds flip it with ``probability``.

    Rounds ``1..p`` keep the initial role; at the first round of each later period
    (rounds ``k*p + 1``, k >= 1) the role flips with probability q. The coin of flip
    point k is a pure function of (seed, node, k).

    Parameters
    ----------
    initial_byzantine : bool
        The role in rounds ``1..period``.
    period : int
        p >= 1, rounds between flip points.
    probability : float
        q in [0, 1], the chance of a flip at each flip point (``q = 1`` inverts the
        role every p rounds).
    seed : int
        Experiment seed.
    node : int
        The node's key (partition id in simulation, node id otherwise).
    """

    initial_byzantine: bool
    period: int
    probability: float
    seed: int = 0
    node: int = 0

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError(
                f"flip-period={self.period} is below 1; valid values: integers >= 1"
            )
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(
                f"flip-probability={self.probability} is outside [0, 1]; valid "
                "values: floats in [0, 1]"
            )

    def flips_up_to(self, server_round: int) -> int:
        """Number of flips that happened at flip points up to ``server_round``."""
        points = max(server_round - 1, 0) // self.period
        if points == 0:
            return 0
        # Coin k is the k-th draw of the node's own stream: a prefix of the stream,
        # so it does not depend on how many rounds are asked for.
        coins = _stream(self.seed, self.node, _TAG_FLIP).random(points)
        return int((coins < self.probability).sum())

    def is_byzantine(self, server_round: int) -> bool:
        """Whether the node plays Byzantine in ``server_round`` (1-based)."""
        return self.initial_byzantine ^ (self.flips_up_to(server_round) % 2 == 1)


Role = StaticRole | PretenseRole | RandomizedRole


def initial_role(seed: int, node: int, probability: float) -> bool:
    """Whether a compromised node starts Byzantine (randomized pattern).

    Each node starts Byzantine with ``probability`` (GAA Fig. 6 varies this initial
    Byzantine ratio); a pure function of (seed, node).
    """
    if probability >= 1.0:
        return True
    return float(_stream(seed, node, _TAG_INITIAL).random()) < probability
