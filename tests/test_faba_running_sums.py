"""FABA's deletion loop: exact decisions after a deleted row dwarfs the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_rules import ref_faba

from flwr_byz.aggregation.faba import faba


@pytest.mark.parametrize("factor", [1e16, 1e20, 1e40])
@pytest.mark.parametrize("seed", range(6))
def test_faba_after_a_huge_row_matches_the_exact_reference(factor, seed):
    """Deleting a row ``factor`` times larger than the others leaves running sums
    without their digits: they are summed afresh, so the next deletions are the
    exact reference's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((9, 6))
    x[4] *= factor
    x = torch.tensor(x)
    ref = ref_faba(x, 3)
    got = faba(x, 3)
    assert got.removed == ref.removed
    assert got.selected == ref.selected
    assert got.removed[0] == 4
