"""The data layer's stream keys (streams: :func:`flwr_byz.seeding.numpy_stream`).

Every stream is keyed by ``(seed, *keys)`` through :class:`numpy.random.SeedSequence`,
so a client can draw its own region's samples without drawing anybody else's, and
adding partitions never changes the existing ones.
"""

from __future__ import annotations

from flwr_byz.seeding import numpy_stream as rng_for

__all__ = [
    "EMBEDDED_QV_STREAM",
    "QV_DRAW_STREAM",
    "QV_NOISE_STREAM",
    "REGION_PARAMS_STREAM",
    "REGION_SAMPLES_STREAM",
    "REGION_TEST_STREAM",
    "SHUFFLE_STREAM",
    "SPLIT_STREAM",
    "TASK_STREAM",
    "rng_for",
]


# Stream keys (first key after the seed); one purpose each, never reused.
TASK_STREAM = 0
REGION_PARAMS_STREAM = 1
REGION_SAMPLES_STREAM = 2
REGION_TEST_STREAM = 3
SPLIT_STREAM = 4
QV_DRAW_STREAM = 5
SHUFFLE_STREAM = 6
EMBEDDED_QV_STREAM = 7
QV_NOISE_STREAM = 8
