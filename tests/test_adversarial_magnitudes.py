"""Finite is not safe: every rule and strategy against huge, tiny and mixed magnitudes.

The honest rows are a tight cluster at one magnitude (from the dtype's smallest normal
or 1e-30 up to its largest value / 1e4); up to ``f`` Byzantine rows, each at its own
magnitude at least 1e3 times larger (up to the dtype's largest finite value), sit
anywhere in the row order. Every rule must return a finite aggregate, never raise,
and keep the guarantee it documents.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import strategy_helpers as sh
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gaa_strategy import qv_set

from flwr_byz import aggregation
from flwr_byz import strategy as strategies
from flwr_byz.strategy.gaa import GAA

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = [torch.float16, torch.float32, torch.float64]

# rule -> (bound name for min_nodes, call)
RULES = {
    "faba": ("faba", lambda x, f: aggregation.faba(x, f)),
    "krum": ("krum", lambda x, f: aggregation.krum(x, f)),
    "multikrum": ("multikrum", lambda x, f: aggregation.multikrum(x, f)),
    "bulyan": ("bulyan", lambda x, f: aggregation.bulyan(x, f)),
    "geomed": ("geomed", lambda x, f: aggregation.geomed_medoid(x, f)),
    "weiszfeld": ("geomed", lambda x, f: aggregation.geometric_median(x, f)),
    "median": ("median", lambda x, f: aggregation.coordinate_median(x)),
    "trimmed-mean": (
        "trimmed-mean",
        lambda x, f: aggregation.trimmed_mean(x, f / x.shape[0]),
    ),
    "brute-force": ("brute-force", lambda x, f: aggregation.brute_force(x, f)),
    "mean": ("mean", lambda x, f: aggregation.mean(x)),
}


def magnitude_case(
    dtype: torch.dtype,
    seed: int,
    n: int,
    f: int,
    num_byz: int,
    d: int,
    honest_exp: float,
    byz_exps: list[float],
    duplicate: bool,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Rows of ``dtype``: a tight honest cluster and ``num_byz`` far rows, shuffled."""
    info = torch.finfo(dtype)
    gen = torch.Generator().manual_seed(seed)
    s_h = 10.0**honest_exp
    centre = torch.randn(d, generator=gen, dtype=torch.float64)
    centre = centre / centre.abs().max()
    noise = torch.randn(n - num_byz, d, generator=gen, dtype=torch.float64)
    honest = s_h * (centre + 1e-2 * noise / noise.abs().max())
    byz = []
    for i in range(num_byz):
        if duplicate and i > 0:
            byz.append(byz[0])
            continue
        v = torch.randn(d, generator=gen, dtype=torch.float64)
        v = v / v.abs().max()  # mixed signs, largest |value| = 1
        # info.max · 10^(e − log10 max): no overflow for e up to log10(max).
        byz.append(info.max * 10.0 ** (byz_exps[i] - math.log10(info.max)) * v)
    rows = torch.cat([honest, torch.stack(byz)]) if byz else honest
    rows = rows.clamp(min=-info.max, max=info.max).to(dtype)
    perm = torch.randperm(n, generator=gen).tolist()
    x = rows[perm]
    honest_rows = sorted(p for p, src in enumerate(perm) if src < n - num_byz)
    byz_rows = sorted(p for p, src in enumerate(perm) if src >= n - num_byz)
    return x, honest_rows, byz_rows


@st.composite
def cases(draw, dtype: torch.dtype, rule: str):
    bound = RULES[rule][0]
    n = draw(st.integers(3, 12))
    f_max = max(f for f in range(n) if aggregation.min_nodes(bound, f) <= n)
    f = draw(st.integers(0, f_max))
    num_byz = draw(st.integers(0, f))
    info = torch.finfo(dtype)
    low = max(math.log10(info.tiny) + 1.0, -30.0)
    high = math.log10(info.max) - 4.0
    honest_exp = draw(st.floats(low, high))
    top = math.log10(info.max)
    byz_exps = [draw(st.floats(honest_exp + 3.0, top)) for _ in range(num_byz)]
    duplicate = draw(st.booleans())
    d = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    return magnitude_case(
        dtype, seed, n, f, num_byz, d, honest_exp, byz_exps, duplicate
    ), f


def check_guarantee(rule: str, x, honest: list[int], byz: list[int], res) -> None:
    """The rule's documented guarantee on a tight honest cluster with far rows."""
    agg = res.aggregate.to(torch.float64)
    assert res.aggregate.dtype == x.dtype and res.aggregate.shape == (x.shape[1],)
    assert bool(torch.isfinite(res.aggregate).all()), f"{rule}: non-finite aggregate"
    h = x[honest].to(torch.float64)
    lo, hi = h.min(dim=0).values, h.max(dim=0).values
    width = (hi - lo).max() + h.abs().max() * 1e-2
    if rule in ("krum", "geomed", "multikrum", "brute-force"):
        assert set(res.selected) <= set(honest), f"{rule} selected a far row"
    elif rule == "faba":
        assert set(byz) <= set(res.removed), f"faba kept a far row: {res.removed}"
    elif rule in ("median", "trimmed-mean"):
        # Order statistics: within the honest range, up to the output's rounding.
        tol = h.abs().max() * torch.finfo(x.dtype).eps
        assert bool(((agg >= lo - tol) & (agg <= hi + tol)).all()), rule
    elif rule in ("bulyan", "weiszfeld"):
        assert bool(((agg >= lo - width) & (agg <= hi + width)).all()), rule


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rule_survives_any_finite_magnitude(rule, dtype):
    @SETTINGS
    @given(case=cases(dtype, rule))
    def run(case):
        (x, honest, byz), f = case
        assert bool(torch.isfinite(x).all())
        res = RULES[rule][1](x, f)
        check_guarantee(rule, x, honest, byz, res)
        assert all(not math.isnan(s) for s in res.scores), f"{rule}: NaN score"

    run()


@st.composite
def extreme_matrices(draw, dtype: torch.dtype):
    """Any finite matrix: values at ±max, ±tiny (subnormal), 0 and in between."""
    info = torch.finfo(dtype)
    n = draw(st.integers(3, 9))
    d = draw(st.integers(1, 6))
    pool = [
        info.max,
        -info.max,
        info.max / 3,
        -info.max / 7,
        info.tiny / 4,
        -info.tiny,
        0.0,
        1.0,
        -2.5,
    ]
    values = draw(st.lists(st.sampled_from(pool), min_size=n * d, max_size=n * d))
    return torch.tensor(values, dtype=torch.float64).reshape(n, d).to(dtype)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rule_is_finite_on_any_finite_matrix(rule, dtype):
    """No guarantee to keep here (no honest majority), but never inf/NaN/raise."""
    bound, call = RULES[rule]

    @SETTINGS
    @given(x=extreme_matrices(dtype))
    def run(x):
        n = x.shape[0]
        f = max(f for f in range(n) if aggregation.min_nodes(bound, f) <= n)
        res = call(x, f)
        assert bool(torch.isfinite(res.aggregate).all()), (rule, x, res.aggregate)
        assert all(not math.isnan(s) for s in res.scores)

    run()


def test_ordering_treats_nan_as_most_suspicious():
    from flwr_byz.aggregation.ordering import argmax_lowest, argmin_lowest

    nan = math.nan
    assert argmin_lowest([nan, 2.0, 1.0, 1.0]) == 2
    assert argmax_lowest([1.0, nan, 5.0, nan]) == 1
    assert argmax_lowest([1.0, nan, 5.0], [True, False, True]) == 2
    assert argmax_lowest([3.0, 3.0, 1.0]) == 0


def test_subnormal_honest_rows_and_a_tiny_far_row():
    """Every product underflows float32; the decisions must still be right."""
    gen = torch.Generator().manual_seed(0)
    honest = 1e-40 * (1 + 0.01 * torch.rand(6, 5, generator=gen, dtype=torch.float64))
    x = torch.cat([torch.full((1, 5), 1e-30, dtype=torch.float64), honest])
    x = x.to(torch.float32)
    assert aggregation.krum(x, 1).selected[0] != 0
    assert aggregation.faba(x, 1).removed == (0,)
    assert 0 not in aggregation.multikrum(x, 1).selected
    assert aggregation.geomed_medoid(x, 1).selected[0] != 0


def test_one_huge_row_at_every_position_is_removed_not_raised():
    """The issue's example: a single float32 row at 1e38 overflows every product."""
    gen = torch.Generator().manual_seed(1)
    honest = torch.randn(9, 1000, generator=gen) * 1e-2
    for pos in range(10):
        x = torch.cat([honest[:pos], torch.full((1, 1000), 1e38), honest[pos:]])
        assert aggregation.faba(x, 2).removed[0] == pos
        assert aggregation.krum(x, 2).selected[0] != pos
        assert pos not in aggregation.multikrum(x, 2).selected
        assert aggregation.geomed_medoid(x, 2).selected[0] != pos
        assert pos in aggregation.brute_force(x, 1).removed
        for res in (
            aggregation.faba(x, 2),
            aggregation.krum(x, 2),
            aggregation.geometric_median(x, 2),
        ):
            assert float(res.aggregate.abs().max()) < 1.0


# ---------------------------------------------------- determinism across processes

_DECISIONS = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_adversarial_magnitudes import RULES, magnitude_case
out = []
for seed in range(6):
    for dtype in (torch.float16, torch.float32, torch.float64):
        top = torch.finfo(dtype).max
        import math
        x, _, _ = magnitude_case(dtype, seed, 11, 2, 2, 300, -2.0,
                                 [math.log10(top), math.log10(top) - 1], seed % 2 == 0)
        for name, (_, call) in sorted(RULES.items()):
            res = call(x, 2)
            out.append([name, list(res.selected), list(res.removed),
                        res.aggregate.to(torch.float64).tolist()])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_decisions_identical_in_fresh_processes():
    script = _DECISIONS.format(tests=str(Path(__file__).parent))
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    ]
    assert json.loads(runs[0])  # non-empty
    assert runs[0] == runs[1] == runs[2]


# ------------------------------------------------------------- Weiszfeld's scale


def _reference_geometric_median(x: np.ndarray) -> np.ndarray:
    """Plain float64 Weiszfeld, run far past convergence (independent code)."""
    z = np.median(x, axis=0)
    for _ in range(20000):
        dist = np.maximum(np.linalg.norm(x - z, axis=1), 1e-300)
        w = 1.0 / dist
        z_new = (w[:, None] * x).sum(0) / w.sum()
        if np.array_equal(z_new, z):
            break
        z = z_new
    return z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_weiszfeld_answer_does_not_depend_on_outlier_magnitude(dtype):
    gen = torch.Generator().manual_seed(4)
    honest = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    direction = torch.randn(6, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm()
    answers = []
    for exp in (3, 6, 9, 12, 20, 30):
        outlier = 10.0**exp * direction
        x = torch.cat([honest, outlier[None, :]]).to(dtype)
        ours = aggregation.geometric_median(x, 1).aggregate.to(torch.float64).numpy()
        ref = _reference_geometric_median(x.to(torch.float64).numpy())
        # Within 1e-4 of the honest spread (~1) of the converged answer ...
        assert np.abs(ours - ref).max() < 1e-4, (exp, np.abs(ours - ref).max())
        answers.append(ours)
    # ... so the answer is the same whatever the outlier's magnitude: its pull is a
    # unit vector (the old stopping rule moved the answer by ~3 at 1e9).
    spread = np.ptp(np.stack(answers), axis=0).max()
    assert spread < 1e-3


def test_weiszfeld_answer_scales_with_its_input():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    base = aggregation.geometric_median(x).aggregate
    for scale in (1e-30, 1e-8, 1e8, 1e30):
        scaled = aggregation.geometric_median(x * scale).aggregate / scale
        torch.testing.assert_close(scaled, base, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the budget f


def test_byzantine_budget_is_floor_with_a_float_guard():
    for n in range(0, 201):
        for f in range(0, n + 1):
            assert aggregation.byzantine_budget(f / n, n) == f if n else True
    assert aggregation.byzantine_budget(0.29, 100) == 29
    assert aggregation.byzantine_budget(0.3, 10) == 3
    assert aggregation.byzantine_budget(0.3, 9) == 2  # floor, not round
    assert aggregation.byzantine_budget(0.3, 32) == 9  # the FABA paper's 30 % of 32
    for text in ("0.1", "0.15", "0.2", "0.29", "0.3", "0.33", "0.45", "0.49"):
        alpha = float(text)
        for n in range(1, 300):
            assert aggregation.byzantine_budget(alpha, n) == math.floor(
                Fraction(text) * n
            )
    with pytest.raises(ValueError, match="alpha"):
        aggregation.byzantine_budget(1.5, 3)


def test_every_fraction_helper_uses_the_budget():
    from flwr_byz.app.config import assumed_f
    from flwr_byz.attacks.config import byzantine_partitions

    assert assumed_f({"assumed-byzantine-fraction": 0.29}, 100) == 29
    assert assumed_f({"assumed-byzantine-fraction": 0.3}, 9) == 2
    cfg = {"attack": "sign-flip", "byzantine-fraction": 0.29, "seed": 0}
    assert len(byzantine_partitions(cfg, 100)) == 29
    assert sh.LocalMean(malicious_fraction=0.29).resolve_f(100) == 29
    assert sh.LocalMean(malicious_fraction=0.3).resolve_f(9) == 2


def test_trimmed_mean_trims_exactly_f_for_every_f_over_n():
    """beta = f/n trims f per side for every (f, n) up to n = 100 (was f-1 for 63)."""
    for n in range(3, 101):
        values = torch.arange(n, dtype=torch.float64) ** 2
        col = values[torch.randperm(n, generator=torch.Generator().manual_seed(n))]
        for f in range(0, (n - 1) // 2 + 1):
            got = float(aggregation.trimmed_mean(col[:, None], f / n).aggregate[0])
            want = float(values[f : n - f].mean())
            assert got == pytest.approx(want, rel=1e-12), (f, n)


# -------------------------------------------------------------- strategies


def _strategies():
    budget = {"num_malicious_nodes": 2}
    return {
        "faba": strategies.FABA(**budget),
        "krum": strategies.Krum(**budget),
        "multikrum": strategies.MultiKrum(**budget),
        "bulyan": strategies.Bulyan(num_malicious_nodes=1),
        "geomed": strategies.GeoMed(**budget),
        "weiszfeld": strategies.GeoMed(method="weiszfeld", **budget),
        "median": strategies.Median(),
        "trimmed-mean": strategies.TrimmedMean(beta=0.2),
        "brute-force": strategies.BruteForce(**budget),
        "mean": strategies.Mean(),
        "gaa": GAA(model_factory=sh.Linear43, qv_set=qv_set(), window=2),
    }


ROBUST = {
    "faba",
    "krum",
    "multikrum",
    "bulyan",
    "geomed",
    "weiszfeld",
    "median",
    "trimmed-mean",
    "brute-force",
    "gaa",
}
NODES = list(range(201, 211))


@pytest.fixture(autouse=True)
def _identity():
    with sh.server_identity():
        yield


@pytest.mark.parametrize("name", sorted(_strategies()))
def test_strategy_survives_any_finite_magnitude(name):
    """Through aggregate_train on real Messages: up to 2 of 10 replies anywhere,
    each at its own magnitude up to float32's largest value."""
    theta = sh.model_arrays(3)
    top = math.log10(torch.finfo(torch.float32).max)

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        exps=st.lists(st.floats(4.0, top), min_size=0, max_size=2),
        positions=st.permutations(range(10)),
        seed=st.integers(0, 1000),
    )
    def run(exps, positions, seed):
        strategy = _strategies()[name]
        rng = np.random.default_rng(seed)
        current = theta
        d = sh.flat(theta).size
        byz_nodes = {NODES[positions[i]] for i in range(len(exps))}
        # Three rounds: GAA trains its policy after its episode of 2.
        for rnd in (1, 2, 3):
            msgs = sh.instructions(strategy, rnd, current, NODES)
            deltas, bi = {}, 0
            for node in NODES:
                if node in byz_nodes:
                    v = rng.uniform(-1, 1, d)
                    deltas[node] = np.clip(
                        10.0 ** exps[bi] * v / np.abs(v).max(), -3.4e38, 3.4e38
                    )
                    bi += 1
                else:
                    deltas[node] = 0.01 + 1e-4 * rng.standard_normal(d)
            replies = [
                sh.reply(
                    m, sh.shifted(current, deltas[m.metadata.dst_node_id]), {"a": 1}
                )
                for m in msgs
            ]
            arrays, _ = strategy.aggregate_train(rnd, replies)
            new = sh.record_flat(arrays)
            assert np.isfinite(new).all()
            report = strategy.history[-1]
            assert report.status in (
                strategies.RoundStatus.OK,
                strategies.RoundStatus.NON_FINITE_RESULT,
            ), (
                report.status,
                report.message,
            )
            if name in ROBUST:
                # Finite updates are the rules' to decide. (Once the undefended
                # mean has moved the model by 1e37, θ + Δ itself may overflow in
                # the test's own replies: those are rightly rejected.)
                assert not report.rejected
            assert all(not math.isnan(s) for s in report.scores)
            if name in ROBUST:
                assert report.status == strategies.RoundStatus.OK, report.message
                honest = np.stack([deltas[n] for n in NODES if n not in byz_nodes])
                moved = new - sh.record_flat(sh.to_record(current))
                lo, hi = honest.min(0) - 1e-3, honest.max(0) + 1e-3
                assert ((moved >= lo) & (moved <= hi)).all(), (name, rnd, exps)
            current = {k: arrays[k].numpy() for k in arrays}

    run()


def test_overflowing_update_is_rejected_with_its_own_reason():
    """Finite weights whose update w − θ overflows float32: UPDATE_OVERFLOW."""
    theta = {k: v.copy() for k, v in sh.model_arrays(2).items()}
    theta["w"][0, 0] = -3e38
    strategy = strategies.FABA(num_malicious_nodes=1)
    msgs = sh.instructions(strategy, 1, theta, NODES[:5])
    bad = {k: v.copy() for k, v in theta.items()}
    bad["w"][0, 0] = 3e38  # finite, but 3e38 − (−3e38) is not a float32
    replies = [sh.reply(msgs[0], bad, {"a": 1})]
    replies += [sh.reply(m, sh.shifted(theta, 0.01), {"a": 1}) for m in msgs[1:]]
    _, metrics = strategy.aggregate_train(1, replies)
    report = strategy.history[-1]
    assert report.rejected == [(msgs[0].metadata.dst_node_id, "UPDATE_OVERFLOW")]
    assert list(metrics["rejected-reasons"]) == [
        int(strategies.RejectReason.UPDATE_OVERFLOW)
    ]
    assert report.status == strategies.RoundStatus.OK


def test_huge_finite_update_with_overflowing_sum_is_not_rejected():
    """Many same-signed values near 3e38 overflow a float32 sum but are finite."""
    theta = sh.model_arrays(2)
    strategy = strategies.FABA(num_malicious_nodes=1)
    msgs = sh.instructions(strategy, 1, theta, NODES[:5])
    replies = [sh.reply(msgs[0], sh.shifted(theta, 3e38), {"a": 1})]
    replies += [sh.reply(m, sh.shifted(theta, 0.01), {"a": 1}) for m in msgs[1:]]
    arrays, _ = strategy.aggregate_train(1, replies)
    report = strategy.history[-1]
    assert not report.rejected
    assert report.removed == [msgs[0].metadata.dst_node_id]
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 0.01, atol=1e-5)


# ------------------------------------------------------------ the server step


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_server_learning_rate_scales_the_step(momentum):
    theta = sh.model_arrays(7)
    strategy = strategies.Mean(server_learning_rate=0.25, server_momentum=momentum)
    current, expected, velocity = theta, sh.flat(theta), 0.0
    for rnd in (1, 2, 3):
        msgs = sh.instructions(strategy, rnd, current, [1, 2])
        replies = [
            sh.reply(msgs[0], sh.shifted(current, 1.0), {"a": 1}),
            sh.reply(msgs[1], sh.shifted(current, 3.0), {"a": 1}),
        ]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        velocity = momentum * velocity + 2.0
        expected = expected + 0.25 * velocity
        np.testing.assert_allclose(sh.record_flat(arrays), expected, atol=1e-4)
        current = {k: arrays[k].numpy() for k in arrays}


def test_fraction_budget_is_floor_not_round_in_a_round():
    """0.3 of 9 valid replies is 2 (round would give 3): FABA removes exactly 2."""
    theta = sh.model_arrays(6)
    strategy = strategies.FABA(malicious_fraction=0.3)
    msgs = sh.instructions(strategy, 1, theta, NODES[:9])
    replies = [
        sh.reply(m, sh.shifted(theta, 0.01 * (i + 1)), {"a": 1})
        for i, m in enumerate(msgs)
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["f"] == 2
    assert len(strategy.history[-1].removed) == 2
