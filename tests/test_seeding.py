"""One seeding helper: the same streams as before it, for every purpose (fast)."""

from __future__ import annotations

import numpy as np
import torch

from flwr_byz.attacks import attack_generator, byzantine_partitions
from flwr_byz.data.seeding import rng_for
from flwr_byz.seeding import numpy_stream, torch_stream


def test_streams_are_seedsequence_of_the_folded_keys() -> None:
    a = numpy_stream(3, 7, 2**64 + 5, -1).random(4)
    b = np.random.default_rng([3, 7, 5, 2**64 - 1]).random(4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        rng_for(3, 1, 2).random(3), np.random.default_rng([3, 1, 2]).random(3)
    )
    state = np.random.SeedSequence([9, 4, 2]).generate_state(1, np.uint64)[0]
    expected = torch.rand(5, generator=torch.Generator().manual_seed(int(state) >> 1))
    assert torch.equal(torch.rand(5, generator=torch_stream(9, 4, 2)), expected)


def test_attack_streams_unchanged() -> None:
    # The README's main job: 7 of 10 partitions, seed 0.
    cfg = {"attack": "random-fault", "byzantine-fraction": 0.7, "seed": 0}
    assert byzantine_partitions(cfg, 10) == [0, 1, 2, 4, 6, 7, 8]
    g = attack_generator(0, 3, 2)
    state = np.random.SeedSequence([0, 3, 2, 0x54414D50]).generate_state(1, np.uint64)
    ref = torch.Generator().manual_seed(int(state[0]) >> 1)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref))
