"""Defining properties of the aggregation rules, preconditions, and numerical safety."""

from __future__ import annotations

import math

import pytest
import reference_rules as ref
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flwr_byz import aggregation as agg

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def unit_directions(k: int, d: int, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def honest_ball(m: int, d: int, eps: float, gen: torch.Generator) -> torch.Tensor:
    """m points strictly inside the ball of radius eps around their own mean."""
    centre = torch.randn(d, generator=gen, dtype=torch.float64) * 5
    radii = torch.rand(m, 1, generator=gen, dtype=torch.float64) * eps / 2
    pts = centre + radii * unit_directions(m, d, gen)
    # Re-centre so the ball is around the honest mean itself (|p - mean| < eps).
    return pts - pts.mean(0) + centre


def shuffled(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    perm = torch.randperm(x.shape[0], generator=gen)
    return x[perm], perm.tolist()


# ---------------------------------------------------------------- FABA ----------


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(
    n=st.integers(3, 30),
    f_frac=st.floats(0.0, 1.0),
    d=st.integers(1, 40),
    spread=st.sampled_from(["clustered", "scattered", "duplicated"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_faba_removes_far_rows_and_returns_honest_mean(
    device, n, f_frac, d, spread, seed
):
    gen = torch.Generator().manual_seed(seed)
    f = math.floor(f_frac * (n - 1) / 2)
    eps = 1.0
    honest = honest_ball(n - f, d, eps, gen)
    g_true = honest.mean(0)
    # Farther than n·eps from the honest mean: provably deleted before any honest row.
    far = 1.01 * n * eps
    dirs = unit_directions(f, d, gen)
    if spread == "duplicated" and f:
        dirs[:] = dirs[0].clone()
    radii = far * (1 + torch.rand(f, 1, generator=gen, dtype=torch.float64))
    if spread != "scattered":
        radii[:] = radii[0].clone() if f else 0
    byz = g_true + radii * dirs
    x, perm = shuffled(torch.cat([honest, byz]), gen)
    res = agg.faba(x.float().to(device), f)
    byz_rows = {perm.index(i) for i in range(n - f, n)}
    assert set(res.removed) == byz_rows
    assert len(res.removed) == f
    torch.testing.assert_close(
        res.aggregate.double().cpu(), g_true, rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(
    n=st.integers(3, 30),
    f_frac=st.floats(0.0, 1.0),
    d=st.integers(1, 20),
    byz_scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_faba_lemma1_ball(device, n, f_frac, d, byz_scale, seed):
    """Lemma 1 of the FABA paper: the result is within ε/(1−2α) of the honest mean."""
    gen = torch.Generator().manual_seed(seed)
    f = math.floor(f_frac * (n - 1) / 2)
    honest = honest_ball(n - f, d, 2.0, gen)
    g_true = honest.mean(0)
    eps = float((honest - g_true).norm(dim=1).max()) * (1 + 1e-9) + 1e-12
    # Byzantine rows anywhere from inside the ball to far outside.
    radii = byz_scale * eps * torch.rand(f, 1, generator=gen, dtype=torch.float64)
    byz = g_true + radii * unit_directions(f, d, gen)
    x, _ = shuffled(torch.cat([honest, byz]), gen)
    res = agg.faba(x.to(device), f)
    alpha = f / n
    dist = float((res.aggregate.cpu() - g_true).norm())
    assert dist <= eps / (1 - 2 * alpha) + 1e-9


def test_faba_weights_only_change_the_final_mean():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    x[2] += 10
    w = torch.tensor([1, 100, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    plain, weighted = agg.faba(x, 2), agg.faba(x, 2, weights=w)
    assert plain.removed == weighted.removed  # deletion ignores self-reported sizes
    kept = list(weighted.selected)
    expected = (w[kept, None] * x[kept]).sum(0) / w[kept].sum()
    torch.testing.assert_close(weighted.aggregate, expected)


# ---------------------------------------------------------------- Krum ----------


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(
    f=st.integers(0, 8),
    extra=st.integers(0, 6),
    d=st.integers(1, 30),
    placement=st.sampled_from(["one-point", "tight-cluster", "scattered", "line"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_krum_never_selects_a_far_row(device, f, extra, d, placement, seed):
    """Byzantine rows beyond the honest cluster's Krum radius are never chosen."""
    gen = torch.Generator().manual_seed(seed)
    n = 2 * f + 3 + extra
    eps = 1.0
    honest = honest_ball(n - f, d, eps, gen)
    c = honest.mean(0)
    # Honest score <= (n-f-2)(2ε)²; a Byzantine row at distance >= R from c is at
    # least R-ε from every honest row, and >= n-2f-1 of its neighbours are honest.
    radius = eps + 2 * eps * math.sqrt((n - f - 2) / (n - 2 * f - 1))
    radius *= 1.001
    u = unit_directions(1, d, gen)[0]
    if placement == "one-point":
        byz = (c + radius * u).repeat(f, 1)
    elif placement == "tight-cluster":
        byz = c + radius * 1.01 * u + 0.01 * eps * unit_directions(f, d, gen)
    elif placement == "line":
        steps = torch.arange(f, dtype=torch.float64)[:, None] * 0.05 * eps
        byz = c + (radius + steps) * u
    else:
        byz = c + radius * (1 + torch.rand(f, 1, generator=gen)) * unit_directions(
            f, d, gen
        )
    x, perm = shuffled(torch.cat([honest, byz.reshape(f, d)]), gen)
    honest_rows = {perm.index(i) for i in range(n - f)}
    res = agg.krum(x.float().to(device), f)
    assert res.selected[0] in honest_rows
    multi = agg.multikrum(x.float().to(device), f)
    assert set(multi.selected) == honest_rows


# ------------------------------------------------------------ permutation -------


def all_rules(f: int):
    return {
        "mean": lambda x: agg.mean(x),
        "faba": lambda x: agg.faba(x, f),
        "krum": lambda x: agg.krum(x, f),
        "multikrum": lambda x: agg.multikrum(x, f),
        "bulyan": lambda x: agg.bulyan(x, 1),
        "geomed": lambda x: agg.geomed_medoid(x, f),
        "geometric_median": lambda x: agg.geometric_median(x, f),
        "median": agg.coordinate_median,
        "trimmed-mean": lambda x: agg.trimmed_mean(x, 0.2),
        "brute-force": lambda x: agg.brute_force(x, f),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", list(all_rules(0)))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 12))
def test_permutation_equivariance(device, rule, seed, d):
    gen = torch.Generator().manual_seed(seed)
    n, f = 11, 3
    x = torch.randn(n, d, generator=gen).to(device)
    perm = torch.randperm(n, generator=gen).tolist()
    fn = all_rules(f)[rule]
    a, b = fn(x), fn(x[perm])
    if rule == "bulyan":
        # Bulyan's last Krum rounds score f-1 neighbours, so exact ties (mutual
        # nearest neighbours; all-zero scores when f = 1) are part of the
        # definition and go to the lowest index: not order-free. Check the
        # permuted run against the reference instead.
        assert b.selected == ref.ref_bulyan(x[perm].cpu(), 1).selected
        return
    # Row perm[k] of x is row k of x[perm].
    assert tuple(sorted(perm[k] for k in b.selected)) == a.selected
    removed = [perm[k] for k in b.removed]
    # FABA reports deletion order; the other rules list rejected rows ascending.
    assert tuple(removed if rule == "faba" else sorted(removed)) == a.removed
    if a.scores:
        torch.testing.assert_close(
            torch.tensor([b.scores[perm.index(i)] for i in range(n)]),
            torch.tensor(a.scores),
        )
    torch.testing.assert_close(b.aggregate, a.aggregate, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ preconditions -----

BOUNDED = {
    "faba": (lambda x, f: agg.faba(x, f), lambda f: 2 * f + 1, "2f+1"),
    "krum": (lambda x, f: agg.krum(x, f), lambda f: 2 * f + 3, "2f+3"),
    "multikrum": (lambda x, f: agg.multikrum(x, f), lambda f: 2 * f + 3, "2f+3"),
    "bulyan": (lambda x, f: agg.bulyan(x, f), lambda f: 4 * f + 3, "4f+3"),
    "geomed": (lambda x, f: agg.geomed_medoid(x, f), lambda f: 2 * f + 1, "2f+1"),
    "geometric_median": (
        lambda x, f: agg.geometric_median(x, f),
        lambda f: 2 * f + 1,
        "2f+1",
    ),
    "brute-force": (lambda x, f: agg.brute_force(x, f), lambda f: 2 * f + 1, "2f+1"),
}


@pytest.mark.parametrize("rule", list(BOUNDED))
@pytest.mark.parametrize("f", [1, 2, 3])
def test_precondition_names_n_f_and_bound(rule, f):
    fn, bound, text = BOUNDED[rule]
    needed = bound(f)
    x = torch.randn(needed, 3)
    assert isinstance(fn(x, f), agg.AggregationResult)  # exactly at the bound: fine
    with pytest.raises(ValueError) as err:
        fn(x[:-1], f)
    msg = str(err.value)
    assert f"n = {needed - 1}" in msg
    assert f"f = {f}" in msg
    assert text in msg
    assert str(needed) in msg


def test_min_nodes_matches_every_rule():
    expected = {
        "mean": 1,
        "faba": 7,
        "krum": 9,
        "multikrum": 9,
        "bulyan": 15,
        "geomed": 7,
        "median": 7,
        "trimmed-mean": 7,
        "brute-force": 7,
        "fltrust": 1,
        "zeno": 4,
    }
    assert set(agg.RULES) == set(expected)
    assert {rule: agg.min_nodes(rule, 3) for rule in agg.RULES} == expected
    with pytest.raises(ValueError, match=r"unknown rule 'fedavg'.*krum"):
        agg.min_nodes("fedavg", 1)
    with pytest.raises(ValueError, match="f=-1: allowed values are an integer >= 0"):
        agg.min_nodes("krum", -1)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: agg.krum(torch.randn(9, 2), -1),
            r"krum: f=-1: allowed .* integer >= 0",
        ),
        (lambda: agg.krum(torch.randn(9, 2), 1.5), r"f=1\.5: allowed"),
        (lambda: agg.faba(torch.randn(9), 1), r"\(n, d\) matrix.*got shape \(9,\)"),
        (lambda: agg.mean(torch.ones(3, 2, dtype=torch.int64)), "floating dtype"),
        (
            lambda: agg.trimmed_mean(torch.randn(4, 2), 0.5),
            r"beta=0\.5: .* \[0\.0, 0\.5\)",
        ),
        (
            lambda: agg.multikrum(torch.randn(9, 2), 1, m=0),
            r"m=0: .* integer >= 1",
        ),
        (lambda: agg.mean(torch.randn(3, 2), torch.ones(2)), r"shape \(3,\)"),
        (lambda: agg.mean(torch.randn(3, 2), torch.tensor([1.0, -1, 1])), ">= 0"),
        (lambda: agg.mean(torch.randn(3, 2), torch.zeros(3)), "all be zero"),
        (
            lambda: agg.geometric_median(torch.randn(3, 2), eps=0.0),
            r"eps=0\.0: .* > 0",
        ),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_brute_force_refuses_too_many_subsets():
    x = torch.randn(50, 4)
    with pytest.raises(ValueError) as err:
        agg.brute_force(x, 15)
    msg = str(err.value)
    assert f"C(50, 15) = {math.comb(50, 15)}" in msg
    assert "max_subsets = 200000" in msg
    assert agg.brute_force(torch.randn(8, 3), 2, max_subsets=28).selected  # C(8,2)=28


def test_weights_of_kept_rows_all_zero_is_refused():
    x = torch.zeros(5, 2, dtype=torch.float64)
    x[4] = 100.0  # deleted first
    w = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="kept rows sum to zero"):
        agg.faba(x, 1, weights=w)


# ------------------------------------------------------------ numerics ----------


def test_float32_cancellation_large_offset_tiny_differences():
    """Offset 1e4× the spread in float32: a plain float32 Gram gets the distances
    wrong by more than their size; ours matches the float64 truth and decides alike."""
    gen = torch.Generator().manual_seed(0)
    n, f, d = 11, 3, 20_000
    spread = 1e-3
    x = 100.0 + spread * torch.randn(n, d, generator=gen)
    x[[2, 5, 9]] += 6 * spread  # three rows a little farther away
    x = x.float()
    x64 = x.double()
    truth = (x64[:, None, :] - x64[None, :, :]).pow(2).sum(-1)
    naive = x @ x.T
    naive_d = naive.diagonal()[:, None] + naive.diagonal()[None, :] - 2 * naive
    off = ~torch.eye(n, dtype=torch.bool)
    naive_err = ((naive_d.double() - truth).abs()[off] / truth[off]).max()
    assert naive_err > 1.0  # the case really is ill-conditioned
    ours = agg.pairwise_sq_distances(x)
    # Error ~1e-6 of the rows' norms around the centre, i.e. ~1e-4 of the smallest
    # distance here; a plain float32 Gram is off by more than 100 %.
    torch.testing.assert_close(ours, truth, rtol=1e-3, atol=0)
    # Plain float64 decisions on the same float32 values.
    remaining, removed = list(range(n)), []
    for _ in range(f):
        m = x64[remaining].mean(0)
        dist = {i: float((x64[i] - m).pow(2).sum()) for i in remaining}
        removed.append(max(remaining, key=lambda i: (dist[i], -i)))
        remaining.remove(removed[-1])
    assert agg.faba(x, f).removed == tuple(removed)
    krum_truth = torch.sort(truth + torch.diag(torch.full((n,), math.inf)), dim=1)
    truth_scores = krum_truth.values[:, : n - f - 2].sum(1)
    assert agg.krum(x, f).selected == (int(torch.argmin(truth_scores)),)
    assert set(agg.faba(x, f).removed) == {2, 5, 9}


@pytest.mark.parametrize("band", [(0, 300), (20_000, 20_300), (49_700, 50_000)])
def test_offset_confined_to_a_few_columns_is_still_centred(band):
    """A large common offset in a narrow band of columns that the conditioning
    sample may miss: the per-chunk check must still catch it."""
    gen = torch.Generator().manual_seed(4)
    n, d = 9, 50_000
    x = torch.randn(n, d, generator=gen) * 0.01
    x[:, band[0] : band[1]] += 1e3 * torch.randn(band[1] - band[0], generator=gen)
    x64 = x.double()
    truth = (x64[:, None, :] - x64[None, :, :]).pow(2).sum(-1)
    torch.testing.assert_close(agg.pairwise_sq_distances(x), truth, rtol=1e-3, atol=0)


def test_duplicated_rows_tie_by_lowest_index():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 1000, generator=gen)
    far = x[0] + 50
    x[[7, 3, 5]] = far  # three identical Byzantine rows
    res = agg.faba(x, 3)
    assert res.removed == (3, 5, 7)
    y = torch.randn(9, 1000, generator=gen)
    y[6] = y[2]  # two identical honest rows: the same Krum score
    k = agg.krum(y, 1)
    if k.selected[0] in (2, 6):
        assert k.selected == (2,)
    assert k.scores[2] == k.scores[6]


def test_deterministic():
    x = torch.randn(20, 5000, generator=torch.Generator().manual_seed(2))
    for fn in all_rules(4).values():
        a, b = fn(x), fn(x)
        assert torch.equal(a.aggregate, b.aggregate)
        assert (a.selected, a.removed, a.scores) == (b.selected, b.removed, b.scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_keep_their_dtype(dtype):
    x = torch.randn(9, 33).to(dtype)
    for fn in all_rules(2).values():
        assert fn(x).aggregate.dtype == dtype


def test_faba_duplicated_rows_are_removed_lowest_index_first():
    # Found by Hypothesis: a BLAS matrix-vector product rounded the two copies'
    # distances differently, so the later copy went first.
    x = torch.tensor(
        [
            [0.33033978939056396484, -0.59541046619415283203],
            [1.67833280563354492188, -7.69466352462768554688],
            [-0.63641333580017089844, 0.67976623773574829102],
            [-2.07822799682617187500, -0.36471560597419738770],
            [1.67833280563354492188, -7.69466352462768554688],
        ],
        dtype=torch.float64,
    )
    assert agg.faba(x, 2).removed == (1, 4)


def test_geometric_median_leaves_a_data_point_that_is_not_the_median():
    # Found by Hypothesis: the start (a mean of rows) fell exactly on a data row,
    # where the smoothed Weiszfeld iteration stalled (objective 7.613 vs 7.436).
    x = torch.tensor(
        [
            [1, -1],
            [0.5, 0.5],
            [0.5, 1],
            [0.5, 1],
            [0, 0],
            [0.5, 0],
            [1, -0.5],
            [1, 1],
            [0.5, -1],
            [1, 0.5],
        ],
        dtype=torch.float32,
    )
    z = agg.geometric_median(x, 0, eps=1e-10, max_iter=3000, tol=1e-13).aggregate
    objective = float((x.double() - z.double()).norm(dim=1).sum())
    assert objective < 7.4360
    # A data point that is the median (the majority sits on it) is kept.
    y = torch.tensor([[0.0, 0.0]] * 6 + [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert torch.equal(agg.geometric_median(y, 0).aggregate, torch.zeros(2))


@pytest.mark.parametrize("n, chosen", [(500, None), (40, None), (300, 120)])
def test_coordinatewise_chunks_hold_a_bounded_number_of_values(
    n: int, chosen: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's size is a number of values, not of columns: with many rows its
    copies stay small (a 65,536-column chunk of 1,000 rows held 262 MB)."""
    from flwr_byz.aggregation import coordinatewise

    monkeypatch.setattr(coordinatewise, "_CPU_CHUNK_VALUES", 20_000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3_000, generator=g)
    rows = None if chosen is None else torch.arange(0, n, n // chosen)[:chosen]
    sizes: list[int] = []

    def median(chunk: torch.Tensor) -> torch.Tensor:
        sizes.append(chunk.numel())
        return chunk.double().median(dim=1).values

    out = coordinatewise.column_chunks(x, median, rows=rows)
    height = n if rows is None else len(rows)
    assert max(sizes) <= max(20_000, 64 * height)
    assert sum(sizes) == height * 3_000
    picked = x if rows is None else x[rows]
    torch.testing.assert_close(out, picked.median(dim=0).values, rtol=0, atol=0)
