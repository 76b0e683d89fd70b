"""The one seeding helper: independent random streams keyed by ``(seed, *keys)``.

Every random draw of flwr-byz (data generation and splits, which partitions are
Byzantine, role schedules, tampering noise, client batches) comes from a stream that
is a pure function of the run seed and a few integer keys (a purpose tag, a node, a
round), through :class:`numpy.random.SeedSequence`. Any process — a Ray actor, a
SuperNode, the server-side injector, the scorer — replays the same draws, and adding
a node or a purpose never changes another stream.

Keys are folded into SeedSequence's range: the seed modulo 2**63, every other key
modulo 2**64 (Flower's node ids are unsigned 64-bit; negative keys wrap). For
non-negative keys below those bounds the fold is the identity.
"""

from __future__ import annotations

import numpy as np
import torch


def _entropy(seed: int, keys: tuple[int, ...]) -> list[int]:
    return [int(seed) % 2**63, *(int(k) % 2**64 for k in keys)]


def numpy_stream(seed: int, *keys: int) -> np.random.Generator:
    """A PCG64 numpy generator for the stream ``(seed, *keys)``."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(_entropy(seed, keys)))
    )


def torch_stream(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch generator for the stream ``(seed, *keys)``."""
    state = np.random.SeedSequence(_entropy(seed, keys)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)
