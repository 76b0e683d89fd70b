"""Every fast aggregation rule equals its plain reference (tests/reference_rules.py).

Inputs come from three generators: continuous random rows (no ties), rows on a coarse
half-integer grid (exact ties everywhere; the fast path is exact there, so decisions
must match the lowest-index tie-break exactly) and f duplicated Byzantine rows.
f ranges from 0 to its bound, d from 1 up.
"""

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
KINDS = ("normal", "grid", "duplicates")


def make_rows(n: int, d: int, f: int, kind: str, seed: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    if kind == "grid":
        # Half-integers in [-1, 1]: exact in float32/float64, ties everywhere.
        return (torch.randint(-2, 3, (n, d), generator=gen) * 0.5).to(dtype)
    offset = torch.randn(d, generator=gen) * 3
    x = offset + torch.randn(n, d, generator=gen)
    if kind == "duplicates" and f > 0:
        far = offset + 4 * torch.randn(d, generator=gen)
        rows = torch.randperm(n, generator=gen)[:f]
        x[rows] = far
    return x.to(dtype)


@st.composite
def instances(draw, bound, max_n=11, max_d=5):
    f_max = max(f for f in range(max_n) if bound(f) <= max_n)
    f = draw(st.integers(0, f_max))
    n = draw(st.integers(max(bound(f), 1), max_n))
    d = draw(st.integers(1, max_d))
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return make_rows(n, d, f, kind, seed, dtype), f


def to(x, device):
    return x.to(device)


def assert_aggregate(
    fast: torch.Tensor, expected: list[float], x: torch.Tensor
) -> None:
    scale = float(x.double().abs().max()) + 1.0
    rtol = 1e-5 if x.dtype == torch.float32 else 1e-10
    assert fast.dtype == x.dtype
    assert fast.device == x.device
    torch.testing.assert_close(
        fast.double().cpu(),
        torch.tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=rtol * scale,
    )


def assert_same_decision(got, want, x: torch.Tensor) -> None:
    """The fast rule keeps and removes the reference's rows, and aggregates alike."""
    assert got.selected == want.selected
    assert got.removed == want.removed
    assert_aggregate(got.aggregate, want.aggregate, x)


def assert_rule_is_reference(rule, reference, case, device) -> None:
    """``rule(x, f)`` on ``device`` decides as ``reference(x, f)``."""
    x, f = case
    assert_same_decision(rule(to(x, device), f), reference(x, f), to(x, device))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 1))
def test_pairwise_sq_distances(device, case):
    x, _ = case
    got = agg.pairwise_sq_distances(to(x, device))
    assert got.dtype == torch.float64
    expected = torch.tensor(ref.ref_pairwise_sq_distances(x), dtype=torch.float64)
    scale = float((x.double() - x.double().mean(0)).pow(2).sum(1).max()) + 1e-30
    rtol = 1e-5 if x.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.cpu(), expected, rtol=rtol, atol=rtol * scale)
    assert torch.equal(got.cpu(), got.cpu().T)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 1), use_weights=st.booleans(), wseed=st.integers(0, 99))
def test_mean(device, case, use_weights, wseed):
    x, _ = case
    w = None
    if use_weights:
        w = torch.randint(
            0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(wseed)
        )
        w[0] += 1  # not all zero
        w = w.double()
    got = agg.mean(to(x, device), w)
    want = ref.ref_mean(x, w)
    assert got.selected == want.selected
    assert_aggregate(got.aggregate, want.aggregate, to(x, device))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 2 * f + 1), use_weights=st.booleans())
def test_faba(device, case, use_weights):
    x, f = case
    w = torch.arange(1, x.shape[0] + 1, dtype=torch.float64) if use_weights else None
    got = agg.faba(to(x, device), f, w)
    want = ref.ref_faba(x, f, w)
    assert_same_decision(got, want, to(x, device))
    assert len(got.scores) == len(got.weights) == x.shape[0]
    assert math.isclose(sum(got.weights), 1.0)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 2 * f + 3))
def test_krum(device, case):
    x, f = case
    got = agg.krum(to(x, device), f)
    want = ref.ref_krum(x, f)
    assert_same_decision(got, want, to(x, device))
    torch.testing.assert_close(
        torch.tensor(got.scores), torch.tensor(want.scores), rtol=1e-5, atol=1e-9
    )


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(
    case=instances(lambda f: 2 * f + 3),
    m_frac=st.one_of(st.none(), st.floats(0.0, 1.0)),
    use_weights=st.booleans(),
)
def test_multikrum(device, case, m_frac, use_weights):
    x, f = case
    n = x.shape[0]
    m = None if m_frac is None else max(1, round(m_frac * n))
    w = torch.arange(n, 0, -1, dtype=torch.float64) if use_weights else None
    got = agg.multikrum(to(x, device), f, m=m, weights=w)
    want = ref.ref_multikrum(x, f, m=m, weights=w)
    assert_same_decision(got, want, to(x, device))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 4 * f + 3, max_n=12))
def test_bulyan(device, case):
    assert_rule_is_reference(agg.bulyan, ref.ref_bulyan, case, device)


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 2 * f + 1))
def test_geomed_medoid(device, case):
    x, f = case
    got = agg.geomed_medoid(to(x, device), f)
    want = ref.ref_medoid(x, f)
    (chosen,) = got.selected
    # Sums of square roots: the fast rule must pick a minimiser up to rounding, and
    # the lowest index among exact minimisers.
    best = min(want.scores)
    assert want.scores[chosen] <= best * (1 + 1e-6) + 1e-12
    near = [i for i, s in enumerate(want.scores) if s <= best * (1 + 1e-6) + 1e-12]
    if len(near) == 1:
        assert got.selected == want.selected
    assert_aggregate(
        got.aggregate, [float(v) for v in x[chosen].tolist()], to(x, device)
    )


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 2 * f + 1), use_weights=st.booleans())
def test_geometric_median(device, case, use_weights):
    x, f = case
    n = x.shape[0]
    w = torch.arange(1, n + 1, dtype=torch.float64) if use_weights else None
    kwargs = {"eps": 1e-10, "max_iter": 3000, "tol": 1e-13}
    got = agg.geometric_median(to(x, device), f, weights=w, **kwargs)
    want = ref.ref_geometric_median(x, weights=w, **kwargs)
    a = torch.ones(n, dtype=torch.float64) if w is None else w

    def objective(z: torch.Tensor) -> float:
        return float(a @ (x.double() - z).norm(dim=1))

    got_obj = objective(got.aggregate.double().cpu())
    want_obj = objective(torch.tensor(want.aggregate, dtype=torch.float64))
    # Weiszfeld converges only sublinearly when the median is a data point (e.g. a
    # row holding half the weight), so both stop short of it at slightly different
    # places: compare objectives to 1e-6.
    assert got_obj <= want_obj * (1 + 1e-6) + 1e-9
    assert math.isclose(sum(got.weights), 1.0)
    # Continuous data: the minimiser is unique and not a data point, so the two
    # iterations must meet. Unique needs rows that are not all on one line: on a
    # line the weighted objective can be flat between two rows (weights 1, 2, 3
    # on three equally spaced rows: every point between the last two).
    spread = x.double() - x.double()[0]
    if (
        len(set(map(tuple, x.tolist()))) == n
        and x.shape[1] > 1
        and int(torch.linalg.matrix_rank(spread)) > 1
    ):
        scale = float(x.double().abs().max()) + 1.0
        torch.testing.assert_close(
            got.aggregate.double().cpu(),
            torch.tensor(want.aggregate, dtype=torch.float64),
            rtol=0,
            atol=1e-3 * scale,
        )


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 1, max_n=12))
def test_coordinate_median(device, case):
    x, _ = case
    got = agg.coordinate_median(to(x, device))
    assert_aggregate(got.aggregate, ref.ref_median(x).aggregate, to(x, device))
    assert got.selected == tuple(range(x.shape[0]))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 1, max_n=12), beta=st.floats(0.0, 0.4999))
def test_trimmed_mean(device, case, beta):
    x, _ = case
    got = agg.trimmed_mean(to(x, device), beta)
    assert_aggregate(
        got.aggregate, ref.ref_trimmed_mean(x, beta).aggregate, to(x, device)
    )


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(case=instances(lambda f: 2 * f + 1, max_n=9))
def test_brute_force(device, case):
    assert_rule_is_reference(agg.brute_force, ref.ref_brute_force, case, device)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_larger_d(kind, dtype):
    """d = 200: long rows through the same code paths, still exact."""
    n, f, d = 9, 2, 200
    x = make_rows(n, d, f, kind, seed=7, dtype=dtype)
    for fast, slow in [
        (lambda: agg.faba(x, f), lambda: ref.ref_faba(x, f)),
        (lambda: agg.krum(x, f), lambda: ref.ref_krum(x, f)),
        (lambda: agg.multikrum(x, f), lambda: ref.ref_multikrum(x, f)),
        (lambda: agg.bulyan(x, 1), lambda: ref.ref_bulyan(x, 1)),
        (lambda: agg.brute_force(x, f), lambda: ref.ref_brute_force(x, f)),
        (lambda: agg.coordinate_median(x), lambda: ref.ref_median(x)),
        (lambda: agg.trimmed_mean(x, 0.25), lambda: ref.ref_trimmed_mean(x, 0.25)),
    ]:
        got, want = fast(), slow()
        assert_same_decision(got, want, x)


@pytest.mark.parametrize("n", [210, 430])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distances_of_many_rows(n, kind, dtype):
    """Enough rows for the Gram product to be cut into blocks (two at n = 210,
    four at 430; :func:`~flwr_byz.aggregation.distances._self_product`): every
    distance is still the direct one, and the matrix exactly symmetric."""
    x = make_rows(n, 6, n // 5, kind, seed=n, dtype=dtype)
    got = agg.pairwise_sq_distances(x)
    x64 = x.double()
    want = (x64[:, None, :] - x64[None, :, :]).square().sum(dim=2)
    scale = float((x64 - x64.mean(0)).square().sum(1).max())
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)
    assert torch.equal(got, got.T)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decisions_on_many_rows(kind, dtype):
    """The rules on a blocked Gram product decide as their references."""
    n = 210
    f = n // 5
    x = make_rows(n, 6, f, kind, seed=n, dtype=dtype)
    for fast, slow in [
        (lambda: agg.krum(x, f), lambda: ref.ref_krum(x, f)),
        (lambda: agg.multikrum(x, f), lambda: ref.ref_multikrum(x, f)),
        (lambda: agg.faba(x, f), lambda: ref.ref_faba(x, f)),
    ]:
        assert_same_decision(fast(), slow(), x)
