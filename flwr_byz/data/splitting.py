"""Seeded index splits shared by every data source (so all sources split alike)."""

from __future__ import annotations

import numpy as np

from flwr_byz.data.seeding import (
    QV_DRAW_STREAM,
    QV_NOISE_STREAM,
    SPLIT_STREAM,
    rng_for,
)

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


def qv_indices(
    labels: np.ndarray,
    qv_size: int,
    seed: int,
    source: str,
    shares: tuple[float, ...] = (),
) -> np.ndarray:
    """``qv_size`` distinct indices of a QV pool, as class-balanced as possible.

    The pool is shuffled (seeded) and classes are then taken in turn, so a 10-sample
    QV set of a 2-class task holds 5 of each when the pool has them. A plain random
    draw can hold a single class (it did for the Yelp-style preset at seed 0), and a
    one-class QV set rewards collapsing the model onto that class — the opposite of
    what the server wants to measure.

    ``shares`` (one weight per class, ``qv-class-shares``) draws a skewed set
    instead: class ``c`` gets its share of ``qv_size`` by largest remainder
    (``(0.9, 0.1)`` and 10 samples: 9 of class 0, 1 of class 1).

    Raises
    ------
    ValueError
        If the pool is smaller than ``qv-size``, or holds fewer samples of a class
        than its share asks for.
    """
    pool_size = len(labels)
    if pool_size < qv_size:
        raise ValueError(
            f"qv-source {source!r} has {pool_size} samples, fewer than qv-size "
            f"{qv_size}; lower 'qv-size' or use a larger source"
        )
    order = rng_for(seed, QV_DRAW_STREAM).permutation(pool_size)
    if shares:
        return _skewed(labels, order, share_counts(shares, qv_size), source)
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    picked: list[int] = []
    depth = 0
    while len(picked) < qv_size:
        for members in by_class:
            if depth < len(members) and len(picked) < qv_size:
                picked.append(int(members[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)


def share_counts(shares: tuple[float, ...], total: int) -> list[int]:
    """``total`` split in proportion to ``shares`` by largest remainder (ties go
    to the lower class), so the counts always sum to ``total``."""
    weight = sum(shares)
    exact = [total * s / weight for s in shares]
    counts = [int(np.floor(e)) for e in exact]
    by_remainder = sorted(range(len(shares)), key=lambda c: (counts[c] - exact[c], c))
    for c in by_remainder[: total - sum(counts)]:
        counts[c] += 1
    return counts


def _skewed(
    labels: np.ndarray, order: np.ndarray, counts: list[int], source: str
) -> np.ndarray:
    picked: list[np.ndarray] = []
    for c, count in enumerate(counts):
        members = order[labels[order] == c]
        if len(members) < count:
            raise ValueError(
                f"qv-source {source!r} has {len(members)} samples of class {c}, "
                f"fewer than the {count} that qv-class-shares asks for; lower "
                "'qv-size' or change 'qv-class-shares'"
            )
        picked.append(members[:count])
    chosen = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return chosen[np.argsort(rank[chosen], kind="stable")].astype(np.int64)


def wrong_labels(
    labels: np.ndarray, fraction: float, num_classes: int, seed: int
) -> np.ndarray:
    """A copy of ``labels`` with ``round(fraction · len(labels))`` of them, at
    seeded positions, replaced by a different class drawn uniformly
    (``qv-label-noise``: a QV set with some wrong labels)."""
    out = labels.copy()
    count = round(fraction * len(labels))
    if count == 0 or num_classes < 2:
        return out
    rng = rng_for(seed, QV_NOISE_STREAM)
    where = rng.choice(len(labels), size=count, replace=False)
    shift = rng.integers(1, num_classes, size=count)
    out[where] = (out[where] + shift) % num_classes
    return out
