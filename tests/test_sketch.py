"""The opt-in sketched distance: its distortion bound, and that rules decide as exact.

The benchmark's inputs (``benchmarks.bench_scale.scale_updates``: heterogeneous honest
updates, a colluding sign-flip group and a noise group) are the documented setting
where the sketch at the default width must select what exact distances select.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.bench_scale import scale_updates
from flwr_byz.aggregation import bulyan, faba, geomed_medoid, krum, multikrum
from flwr_byz.aggregation.distances import (
    pairwise_sq_distances,
    scaled_cross_sq_distances,
)
from flwr_byz.aggregation.sketch import DEFAULT_SKETCH_DIM, CountSketch


def _sq_norm_ratios(k: int, v: torch.Tensor, seeds: range) -> np.ndarray:
    return np.array(
        [
            float(CountSketch(k, s).project(v[None, :]).double().square().sum())
            / float(v.double().square().sum())
            for s in seeds
        ]
    )


def test_squared_norms_are_unbiased_within_the_documented_spread() -> None:
    # All-positive entries: a sketch without random signs would add every
    # collision's cross term and overestimate by about d/k.
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(20_000, generator=gen) + 0.5
    k = 256
    ratios = _sq_norm_ratios(k, v, range(200))
    bound = math.sqrt(2.0 / k)
    assert abs(ratios.mean() - 1.0) < 3 * bound / math.sqrt(len(ratios))
    assert ratios.std() <= 1.2 * bound
    assert ratios.std() >= 0.5 * bound  # it is a random projection, not the identity


def test_an_update_concentrated_on_few_coordinates_is_still_estimated() -> None:
    # The hash is random: a deviation placed on every k-th coordinate (one bucket
    # under a hash j mod k) still lands in (almost) distinct buckets.
    v = torch.zeros(4096 * 64)
    v[::4096] = 1.0
    ratios = _sq_norm_ratios(4096, v, range(100))
    assert abs(ratios.mean() - 1.0) < 0.05
    assert ratios.std() <= 0.2


def test_the_sketch_is_linear_seeded_and_centred() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3000, generator=gen, dtype=torch.float64)
    s = CountSketch(64, seed=3)
    y = s.project(x)
    assert torch.allclose(s.project(x, x[2]), y - y[2], atol=1e-12)
    assert torch.allclose(s.project(x[:2] + x[3:5]), y[:2] + y[3:5], atol=1e-12)
    assert torch.equal(CountSketch(64, seed=3).project(x), y)
    assert not torch.allclose(CountSketch(64, seed=4).project(x), y)
    assert y.shape == (5, 64) and y.dtype == torch.float64


def test_a_huge_finite_float32_row_gives_a_finite_sketch() -> None:
    x = torch.zeros(4, 10_000)
    x[1] = 3e38
    x[2] = -3e38
    y = CountSketch(1024).project(x, x[0])
    assert y.dtype == torch.float64 and bool(torch.isfinite(y).all())
    assert float(y[1].square().sum()) == pytest.approx(1e4 * 9e76, rel=0.2)


def test_a_large_common_offset_costs_the_sketch_no_precision() -> None:
    # float32 rows 1e7 from the origin, about 1 apart: sketched without centring,
    # each bucket's float32 sum would round away much of the differences.
    from flwr_byz.aggregation.distances import scaled_pairwise_sq_distances

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(12, 40_000, generator=gen) + 1e7
    sketch = CountSketch(1024, min_rows=0)
    approx, _ = scaled_pairwise_sq_distances(x, sketch=sketch)
    # The same sketch of the same numbers, in float64 arithmetic.
    reference = pairwise_sq_distances(sketch.project(x.double()))
    off = ~torch.eye(12, dtype=torch.bool)
    assert torch.allclose(approx[off], reference[off], rtol=1e-4)


@pytest.mark.parametrize("bad", [0, 15, 2.5, True])
def test_a_too_narrow_or_non_integer_sketch_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="allowed values are an integer >= 16"):
        CountSketch(bad)


@pytest.mark.parametrize("offset", [0.0, 100.0, "near-copies"])
def test_cross_distances_equal_the_full_matrix_rows(offset) -> None:
    # 0: one read and the norm algebra; 100: a common offset 100× the spread
    # (computed centred); near-copies: two rows 1e-3 apart (that pair directly).
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 5000, generator=gen)
    if offset == "near-copies":
        x[7] = x[4] + 1e-3 * torch.randn(5000, generator=gen)
    else:
        x += offset
    full = pairwise_sq_distances(x).cpu()
    cross, scale = scaled_cross_sq_distances(x, [4, 0, 29])
    assert scale == 1.0
    assert torch.allclose(cross, full[[4, 0, 29]], rtol=1e-5, atol=1e-6)
    assert cross[0, 4] == 0.0


@pytest.fixture(scope="module")
def bench_inputs() -> tuple[torch.Tensor, int]:
    n, f = 80, 16
    x = torch.from_numpy(scale_updates(n, 100_000, f, seed=0))
    return x, f


def test_sketched_distances_stay_within_the_bound_on_the_bench_inputs(
    bench_inputs,
) -> None:
    x, _ = bench_inputs
    exact = pairwise_sq_distances(x)
    sketch = CountSketch(DEFAULT_SKETCH_DIM, seed=0, min_rows=0)
    from flwr_byz.aggregation.distances import scaled_pairwise_sq_distances

    approx, _ = scaled_pairwise_sq_distances(x, sketch=sketch)
    off = ~torch.eye(x.shape[0], dtype=torch.bool)
    rel = (approx[off] / exact[off] - 1.0).abs()
    bound = sketch.relative_std_bound()
    assert float(rel.mean()) < bound  # mean |error| ≈ 0.8 std
    assert float(rel.max()) < 6 * bound
    assert float(rel.mean()) > 0.1 * bound  # a sketch, not the exact distances


@pytest.mark.parametrize(
    "rule",
    [
        lambda x, f, s: krum(x, f, sketch=s),
        lambda x, f, s: multikrum(x, f, sketch=s),
        lambda x, f, s: faba(x, f, sketch=s),
        lambda x, f, s: geomed_medoid(x, f, sketch=s),
    ],
    ids=["krum", "multikrum", "faba", "geomed"],
)
def test_sketched_rules_select_as_exact_on_the_bench_inputs(bench_inputs, rule) -> None:
    x, f = bench_inputs
    exact = rule(x, f, None)
    sketched = rule(x, f, CountSketch(DEFAULT_SKETCH_DIM, seed=0, min_rows=0))
    assert sketched.selected == exact.selected
    assert torch.equal(sketched.aggregate, exact.aggregate)


def test_sketched_bulyan_keeps_the_byzantine_rows_out(bench_inputs) -> None:
    # Bulyan keeps θ = n − 2f of the n − f honest rows: at the boundary, rows of
    # similar quality are within the sketch's distortion of each other, so one
    # honest row may be swapped for another; no Byzantine row gets in.
    x, f = bench_inputs
    n = x.shape[0]
    fb = (n - 3) // 4
    exact = set(bulyan(x, fb).selected)
    for seed in range(3):
        sketch = CountSketch(DEFAULT_SKETCH_DIM, seed=seed, min_rows=0)
        chosen = set(bulyan(x, fb, sketch=sketch).selected)
        assert len(chosen) == len(exact) and max(chosen) < n - f
        assert len(chosen ^ exact) <= 2


def test_sketched_krum_decides_among_its_shortlist_on_exact_distances() -> None:
    # Honest rows that differ by less than the sketch's distortion: the sketch
    # alone would pick at random among them; the exact shortlist finds the best.
    gen = torch.Generator().manual_seed(5)
    n, d = 30, 50_000
    scales = 1.0 + 0.01 * torch.arange(n, dtype=torch.float32).flip(0)
    x = torch.randn(n, d, generator=gen) * scales[:, None]
    exact = krum(x, 3)
    alone = 0
    for seed in range(5):
        sketched = krum(x, 3, sketch=CountSketch(1024, seed=seed, min_rows=0))
        assert sketched.selected == exact.selected
        # The reported scores are the sketched ones: their argmin alone misses.
        alone += int(np.argmin(sketched.scores)) == exact.selected[0]
    assert alone < 5


def test_duplicated_rows_still_tie_by_lowest_index_when_sketched() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, 4000, generator=gen)
    x[7] = x[3]
    x[9] = x[3]
    result = krum(x, 2, sketch=CountSketch(64, min_rows=0))
    sq = pairwise_sq_distances(x)
    assert result.selected[0] not in (7, 9)
    assert float(sq[3, 7]) == 0.0


def test_the_strategy_decides_on_the_sketch_it_is_given(bench_inputs) -> None:
    from flwr.app import ArrayRecord

    from benchmarks.bench_scale import replies_from_updates
    from benchmarks.bench_strategies import fresh_replies
    from flwr_byz.strategy import Krum
    from tests.strategy_helpers import server_identity

    x, f = bench_inputs
    replies = replies_from_updates(x[:, :20_000].numpy())
    outcomes = {}
    for k in (0, 1024):
        strategy = Krum(num_malicious_nodes=f, distance_sketch=k)
        nodes = dict.fromkeys(range(1, replies.n + 1), "train")
        with server_identity():
            strategy.remember_sent(1, replies.theta, nodes)
            arrays, _ = strategy.aggregate_train(1, fresh_replies(replies))
        assert isinstance(arrays, ArrayRecord)
        outcomes[k] = strategy.history[-1]
    assert outcomes[1024].selected == outcomes[0].selected
    assert outcomes[1024].scores != outcomes[0].scores  # it did use the sketch
    assert outcomes[1024].scores == pytest.approx(outcomes[0].scores, rel=0.15)
    # At most 64 rows the exact Gram is the cheaper one: the strategy stays exact.
    few = replies_from_updates(x[:64, :20_000].numpy())
    strategy = Krum(num_malicious_nodes=f, distance_sketch=1024)
    exact = Krum(num_malicious_nodes=f)
    for s in (strategy, exact):
        with server_identity():
            s.remember_sent(1, few.theta, dict.fromkeys(range(1, 65), "train"))
            s.aggregate_train(1, fresh_replies(few))
    assert strategy.history[-1].scores == exact.history[-1].scores


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("Median", "does not decide on pairwise distances"),
        ("Krum", "integers >= 16"),
    ],
)
def test_a_sketch_a_rule_cannot_use_is_refused_at_construction(make, message) -> None:
    from flwr_byz import strategy as strategies

    kwargs = {"num_malicious_nodes": 1} if make == "Krum" else {}
    width = 8 if make == "Krum" else 1024
    with pytest.raises(ValueError, match=message):
        getattr(strategies, make)(distance_sketch=width, **kwargs)


def test_the_run_config_refuses_a_sketch_for_a_rule_without_distances() -> None:
    from flwr_byz.app.config import RunConfigError, check_run_config

    cfg = check_run_config({"strategy": "krum", "distance-sketch": 1024})
    assert cfg["distance-sketch"] == 1024
    with pytest.raises(RunConfigError, match="'distance-sketch' = 1024 needs"):
        check_run_config({"strategy": "median", "distance-sketch": 1024})
    with pytest.raises(RunConfigError, match="distance-sketch"):
        check_run_config({"strategy": "krum", "distance-sketch": 3})


@pytest.mark.parametrize("kind", ["continuous", "ties", "duplicates", "far-cluster"])
def test_repeated_krum_by_running_sums_equals_sorting_each_time(kind) -> None:
    # Bulyan's selection in O(n² log n): the same choices, in the same order, as
    # re-sorting the remaining distances for every choice.
    from flwr_byz.aggregation.bulyan import _repeated_krum_by_sorting, repeated_krum

    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        n = int(torch.randint(7, 40, (1,), generator=gen))
        f = (n - 3) // 4
        x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
        if kind == "ties":
            x = (x * 2).round() / 2
        elif kind == "duplicates":
            x[n - f :] = x[0]
        elif kind == "far-cluster":  # half the rows in a cluster 1e9 away
            x[: n // 2] += 1e9 * torch.randn(6, generator=gen, dtype=torch.float64)
        sq = pairwise_sq_distances(x)
        assert repeated_krum(sq, f, n - 2 * f) == _repeated_krum_by_sorting(
            sq, f, n - 2 * f
        ), (kind, seed)


def test_the_centred_cross_distances_agree_under_a_large_offset() -> None:
    # The path taken when most pairs would cancel (rows 1e4 from the origin,
    # about 1 apart): centred on the reference row, exact to float64 rounding.
    from flwr_byz.aggregation.distances import _centred_cross

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, 3000, generator=gen, dtype=torch.float64) + 1e4
    full = pairwise_sq_distances(x).cpu()
    index = torch.tensor([3, 11])
    got = _centred_cross(x, index, 1024, torch.float64)
    assert torch.allclose(got, full[[3, 11]], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("magnitude", [1e6, 1e30, 3e38])
@pytest.mark.parametrize("name", ["krum", "multikrum", "faba", "geomed"])
def test_a_huge_finite_reply_never_takes_over_a_sketched_rule(name, magnitude) -> None:
    # The adversarial-magnitude guarantee holds through the sketch: a few rows
    # anywhere up to float32's largest value are never chosen, and the
    # aggregate stays finite and honest-sized.
    rules = {
        "krum": lambda x, f, s: krum(x, f, sketch=s),
        "multikrum": lambda x, f, s: multikrum(x, f, sketch=s),
        "faba": lambda x, f, s: faba(x, f, sketch=s),
        "geomed": lambda x, f, s: geomed_medoid(x, f, sketch=s),
    }
    gen = torch.Generator().manual_seed(8)
    n, d, f = 70, 600, 3
    x = torch.randn(n, d, generator=gen)
    x[5] = magnitude
    x[40, ::3] = -magnitude
    x[66] = magnitude * torch.sign(torch.randn(d, generator=gen))
    sketch = CountSketch(64, seed=1)
    assert sketch.applies_to(n, d)
    result = rules[name](x, f, sketch)
    assert not {5, 40, 66} & set(result.selected)
    assert bool(torch.isfinite(result.aggregate).all())
    assert float(result.aggregate.abs().max()) < 10.0


def test_the_exact_short_list_scores_are_krum_scores() -> None:
    # Every row short-listed (k = 16: a wide slack): the exact re-scoring must
    # pick exactly Krum's row, so each score is over n − f − 2 *other* rows.
    from flwr_byz.aggregation.krum import _shortlist_exact, krum_scores

    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        n, f = 16, 4
        x = torch.randn(n, 50, generator=gen, dtype=torch.float64)
        x *= torch.rand(n, 1, generator=gen, dtype=torch.float64) * 3
        scores = krum_scores(pairwise_sq_distances(x), f)
        best = _shortlist_exact(x, f, scores, CountSketch(16, min_rows=0))
        assert best == int(np.argmin(scores)), seed


def test_the_sketched_medoid_with_every_row_short_listed_is_the_exact_medoid() -> None:
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(16, 50, generator=gen, dtype=torch.float64)
        x[10:] += 8.0  # a far group: the medoid is not the row nearest the mean
        sketched = geomed_medoid(x, 0, sketch=CountSketch(16, seed=seed, min_rows=0))
        assert sketched.selected == geomed_medoid(x, 0).selected, seed
