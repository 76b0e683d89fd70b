"""The n × n work matrices computed in numpy on the CPU are, bit for bit, the
torch expressions of their definitions (the same IEEE operations, same order)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_byz.aggregation import distances as dist
from flwr_byz.aggregation.coordinatewise import sorted_median
from flwr_byz.aggregation.krum import krum_scores
from flwr_byz.strategy.suspicion import _sorted_median


def _grams():
    rng = np.random.default_rng(7)
    for kind in range(6):
        n = int(rng.integers(2, 60))
        x = rng.standard_normal((n, 33))
        if kind == 1:
            x += 1e6  # a large common offset: the centring cancels
        if kind == 2:
            x[-1] *= 1e30  # one far row
        if kind == 3:
            x[: n // 2] = x[0]  # duplicates
        if kind == 4:
            x = np.round(x)  # exact ties
        if kind == 5:
            x *= 1e-150
        g = torch.from_numpy(x @ x.T)
        yield (g + g.T) / 2


@pytest.mark.parametrize("gram", list(_grams()))
def test_numpy_work_matrices_equal_the_torch_definitions(gram):
    n = gram.shape[0]
    diag = gram.diagonal()
    sq = (diag[:, None] + diag[None, :] - 2.0 * gram).clamp_(min=0.0)
    sq.fill_diagonal_(0.0)
    assert torch.equal(dist.sq_distances_from_gram(gram), sq)
    for ref in {0, n // 2, n - 1}:
        col = gram[:, ref]
        centred = gram - col[:, None] - col[None, :] + gram[ref, ref]
        assert torch.equal(dist._centre_gram(gram, ref), centred)
    d = sq.sqrt()
    sums = d.sum(dim=1).tolist()
    p = min(range(n), key=lambda i: (math.isnan(sums[i]), sums[i], i))
    num = (diag[:, None] - diag[p]) - 2.0 * (gram - gram[p])
    den = d + d[p]
    terms = torch.where(den > 0, num / den.clamp(min=1e-300), 0.0).sum(dim=1)
    values = terms.tolist()
    expected = min(range(n), key=lambda i: (math.isnan(values[i]), values[i], i))
    assert dist.medoid(gram, d) == expected
    skewed = gram + torch.linspace(0, 1e-9, n * n, dtype=torch.float64).reshape(n, n)
    assert torch.equal(dist._symmetric(skewed), (skewed + skewed.T) / 2)


def test_copies_get_their_first_copys_gram_row():
    """Gram entries of two copies that BLAS rounded apart are made equal."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 40))
    x[4] = x[1]
    gram = torch.from_numpy(x @ x.T)
    gram[4, :] = torch.from_numpy(np.nextafter(gram[4, :].numpy(), np.inf))
    gram[:, 4] = gram[4, :]
    gram[4, 4] = gram[4, 4] * (1 + 1e-14)  # a distance of 0 computed as > 0
    assert not torch.equal(gram[4], gram[1])
    tied = dist._tie_duplicates(torch.from_numpy(x), gram, 1e-12)
    assert torch.equal(tied[4, [0, 2, 3, 5]], tied[1, [0, 2, 3, 5]])
    assert tied[4, 4] == tied[1, 1] == tied[1, 4] == tied[4, 1]
    others = [0, 2, 3, 5]
    assert torch.equal(tied[others][:, others], gram[others][:, others])


@pytest.mark.parametrize("gram", list(_grams()))
def test_krum_scores_equal_their_torch_definition(gram):
    n = gram.shape[0]
    if n < 3:
        pytest.skip("Krum needs n >= f + 3")
    sq = dist.sq_distances_from_gram(gram).clone()
    sq[0, 1:] = math.nan
    sq[-1, 0] = math.inf
    others = sq.nan_to_num(nan=math.inf)
    others.fill_diagonal_(math.inf)
    for f in {0, (n - 3) // 2}:
        nearest = torch.sort(others, dim=1).values[:, : n - f - 2]
        assert krum_scores(sq, f) == nearest.sum(dim=1).tolist()


def test_float32_products_are_cast_and_summed_as_torch_does():
    rng = np.random.default_rng(3)
    product = torch.from_numpy(rng.standard_normal((300, 300)).astype(np.float32))
    product[5, 7] = 3e38
    assert torch.equal(dist._float64(product), product.to(torch.float64))
    cols = torch.ones(300, 4)
    assert dist._reliable(dist._float64(product), cols)
    product[5, 7] = math.inf
    assert not dist._reliable(dist._float64(product), cols)


def test_the_suspicion_median_equals_the_coordinatewise_one():
    rng = np.random.default_rng(5)
    for width in (7, 8):
        ordered = np.sort(rng.standard_normal((40, width)), axis=1)
        ordered[0, width // 2 - 1 :] = np.finfo(np.float64).max
        expected = sorted_median(torch.from_numpy(ordered)).numpy()
        assert np.array_equal(_sorted_median(ordered), expected)
