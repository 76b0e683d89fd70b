"""Independent random streams derived from the run seed.

Every stream is keyed by ``(seed, *keys)`` through :class:`numpy.random.SeedSequence`,
so a client can draw its own region's samples without drawing anybody else's, and
adding partitions never changes the existing ones.
"""

from __future__ import annotations

import numpy as np


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A PCG64 generator for the stream ``(seed, *keys)``; all values must be >= 0."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


# Stream keys (first key after the seed); one purpose each, never reused.
TASK_STREAM = 0
REGION_PARAMS_STREAM = 1
REGION_SAMPLES_STREAM = 2
REGION_TEST_STREAM = 3
SPLIT_STREAM = 4
QV_DRAW_STREAM = 5
SHUFFLE_STREAM = 6
