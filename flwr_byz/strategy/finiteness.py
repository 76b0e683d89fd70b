"""Whether an array holds only finite values, read once in the usual case."""

from __future__ import annotations

import math

import numpy as np


def all_finite(values: np.ndarray) -> bool:
    """``True`` when every value of the 1-D array ``values`` is finite.

    One cheap reduction: a finite sum of squares (BLAS's dot, several times
    faster than a float32 sum or ``isfinite``'s mask) means finite values. One
    that is not may only have overflowed on large finite values (beyond about
    1e19 in float32), so then they are read again.
    """
    return math.isfinite(float(np.dot(values, values))) or bool(
        np.isfinite(values).all()
    )
