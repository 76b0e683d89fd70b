"""The suspicion's column sample: the distances are those of exactly the sampled
columns, read from the matrix or kept while a streamed mean decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz.strategy.suspicion import median_distances, sample_index


@pytest.mark.parametrize(("n", "d"), [(10, 100_000), (65, 40_000), (300, 20_000)])
def test_distances_on_exactly_the_sampled_columns(n, d):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    # Columns outside the sample differ wildly: reading any of them shows.
    index = sample_index(n, d)
    assert index is not None and len(index) < d
    outside = np.ones(d, dtype=bool)
    outside[index] = False
    x[:, outside] *= rng.uniform(0, 1e3, size=(n, 1)).astype(np.float32)
    sample = x[:, index].astype(np.float64)
    centre = np.median(sample, axis=0)
    expected = np.linalg.norm(sample - centre, axis=1)
    got = median_distances(torch.from_numpy(x))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # The streamed mean keeps only these columns: the same distances (to the
    # rounding of a float64 norm, which may depend on the buffer's alignment).
    kept = median_distances(torch.from_numpy(x[:, index]), sampled=True)
    np.testing.assert_allclose(kept, got, rtol=1e-14)


@pytest.mark.parametrize("width", [1024, 2048])
def test_rows_a_page_long_are_read_as_given(width):
    # Rows of 4 KiB multiples are copied into longer rows before they are read
    # column by column: each of several matrices in turn gives its own distances.
    rng = np.random.default_rng(width)
    for n in (5, 10, 10, 33):
        x = rng.standard_normal((n, width)).astype(np.float32) * rng.uniform(1, 9)
        centre = np.median(x.astype(np.float64), axis=0)
        expected = np.linalg.norm(x - centre, axis=1)
        got = median_distances(torch.from_numpy(x), sampled=True)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
