"""Seeded index splits shared by every data source (so all sources split alike)."""

from __future__ import annotations

import numpy as np

from flwr_byz.data.seeding import QV_DRAW_STREAM, SPLIT_STREAM, rng_for

#: A partition needs at least this many training samples (a standard deviation).
MIN_TRAIN_SAMPLES = 2


def train_test_indices(
    num_samples: int,
    test_fraction: float,
    seed: int,
    partition_id: int,
    what: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_samples)`` into train and local-test indices.

    ``round(test_fraction * num_samples)`` samples (at least one when
    ``test_fraction > 0``) go to the test part, chosen by a permutation seeded with
    ``(seed, partition_id)``. ``what`` names the partition in errors.

    Raises
    ------
    ValueError
        If fewer than :data:`MIN_TRAIN_SAMPLES` training samples would remain.
    """
    n_test = round(test_fraction * num_samples)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if num_samples - n_test < MIN_TRAIN_SAMPLES:
        raise ValueError(
            f"{what or f'partition {partition_id}'} has {num_samples} samples; "
            f"with test-fraction "
            f"{test_fraction} at least {MIN_TRAIN_SAMPLES} must remain for training"
        )
    perm = rng_for(seed, SPLIT_STREAM, partition_id).permutation(num_samples)
    return perm[n_test:], perm[:n_test]


def qv_indices(labels: np.ndarray, qv_size: int, seed: int, source: str) -> np.ndarray:
    """``qv_size`` distinct indices of a QV pool, as class-balanced as possible.

    The pool is shuffled (seeded) and classes are then taken in turn, so a 10-sample
    QV set of a 2-class task holds 5 of each when the pool has them. A plain random
    draw can hold a single class (it did for the Yelp-style preset at seed 0), and a
    one-class QV set rewards collapsing the model onto that class — the opposite of
    what the server wants to measure.

    Raises
    ------
    ValueError
        If the pool is smaller than ``qv-size``.
    """
    pool_size = len(labels)
    if pool_size < qv_size:
        raise ValueError(
            f"qv-source {source!r} has {pool_size} samples, fewer than qv-size "
            f"{qv_size}; lower 'qv-size' or use a larger source"
        )
    order = rng_for(seed, QV_DRAW_STREAM).permutation(pool_size)
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < qv_size:
        for members in by_class:
            if depth < len(members) and len(picked) < qv_size:
                picked.append(int(members[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)
