"""The medoid (GeoMed, and every Gram's reference row): equal sums of distances
tie by the lowest row index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz.aggregation.distances import medoid, scaled_centred_gram
from flwr_byz.aggregation.distances import sq_distances_from_gram as sq_dist
from flwr_byz.aggregation.geomed import geomed_medoid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(5))
def test_duplicated_centre_is_chosen_at_its_first_copy(dtype, seed):
    rng = np.random.default_rng(seed)
    n = 9
    x = rng.standard_normal((n, 7)) * 0.1
    centre = x.mean(axis=0)
    first, second = sorted(rng.choice(n, 2, replace=False).tolist())
    x[first] = x[second] = centre  # two copies of the most central update
    x = torch.tensor(x, dtype=dtype)
    assert geomed_medoid(x, 1).selected == (first,)
    gram, _ = scaled_centred_gram(x)
    gram = gram.cpu()
    assert medoid(gram, sq_dist(gram).sqrt()) == first
