"""FLTrust and Zeno: the pure rules against plain references, and the strategies.

The references (tests/reference_rules.py) compute dot products and squared norms
exactly (fractions) and score Zeno's rows one at a time in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_rules as ref
import strategy_helpers as sh
import torch
from torch import nn

from flwr_byz.aggregation import RULES, fltrust, min_nodes, zeno
from flwr_byz.app.config import RunConfigError, check_run_config
from flwr_byz.strategy import STRATEGIES, FLTrust, RoundStatus, Zeno

KINDS = ("normal", "grid", "duplicates")


def make_rows(n: int, d: int, kind: str, seed: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    if kind == "grid":  # half-integers: exact in both dtypes, ties everywhere
        return (torch.randint(-2, 3, (n, d), generator=gen) * 0.5).to(dtype)
    x = torch.randn(d, generator=gen) + torch.randn(n, d, generator=gen)
    if kind == "duplicates" and n > 2:
        x[n // 2 :] = 3 * torch.randn(d, generator=gen)  # one repeated far row
    return x.to(dtype)


def cases(count: int = 36):
    for seed in range(count):
        gen = np.random.default_rng(seed)
        yield (
            int(gen.integers(1, 10)),
            int(gen.integers(1, 7)),
            KINDS[seed % 3],
            seed,
            (torch.float32, torch.float64)[seed % 2],
        )


def close(fast: torch.Tensor, expected: list[float], scale: float) -> None:
    tol = 1e-5 if fast.dtype == torch.float32 else 1e-10
    want = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(
        fast.double(), want, rtol=tol, atol=tol * (scale + 1e-30)
    )


# ------------------------------------------------------------------ FLTrust
@pytest.mark.parametrize(("n", "d", "kind", "seed", "dtype"), list(cases()))
def test_fltrust_equals_reference(n, d, kind, seed, dtype):
    x = make_rows(n, d, kind, seed, dtype)
    server = make_rows(1, d, kind, seed + 10_000, dtype)[0]
    fast, expected = fltrust(x, server), ref.ref_fltrust(x, server)
    assert fast.aggregate.dtype == dtype
    assert fast.selected == expected.selected
    assert fast.removed == expected.removed
    assert fast.scores == pytest.approx(expected.scores, abs=1e-12)
    close(fast.aggregate, expected.aggregate, float(server.double().norm()))
    if fast.selected:
        assert not fast.no_update
        assert sum(fast.weights) == pytest.approx(1.0)
        total = sum(expected.scores)
        assert fast.weights == pytest.approx([t / total for t in expected.scores])
    else:
        assert fast.no_update and fast.weights == (0.0,) * n


def test_fltrust_rescales_every_row_to_the_server_norm():
    server = torch.tensor([3.0, 4.0])  # norm 5
    x = torch.tensor([[0.001, 0.0], [0.0, 1000.0], [-1.0, 0.0]])
    res = fltrust(x, server)
    # cos = 0.6, 0.8, 0 (ReLU of −0.6); rescaled rows (5, 0) and (0, 5).
    assert res.scores == pytest.approx((0.6, 0.8, 0.0))
    assert res.removed == (2,) and res.selected == (0, 1)
    torch.testing.assert_close(res.aggregate, torch.tensor([0.6 * 5, 0.8 * 5]) / 1.4)


def test_fltrust_ties_give_equal_weights():
    server = torch.tensor([1.0, 1.0, 0.0])
    row = torch.tensor([1.0, 0.0, 1.0])
    x = torch.stack([row, 2 * row, row, torch.tensor([0.0, 1.0, 1.0])])
    res = fltrust(x, server)
    assert res.scores[0] == res.scores[1] == res.scores[2] == res.scores[3]
    assert res.weights == pytest.approx((0.25,) * 4)


def test_fltrust_zero_total_trust_says_so_and_moves_nothing():
    server = torch.tensor([1.0, -2.0, 0.5])
    x = torch.stack([-server, -3 * server, torch.tensor([2.0, 1.0, 0.0])])  # cos <= 0
    res = fltrust(x, server)
    assert "zero total trust" in res.no_update
    assert res.selected == () and res.removed == (0, 1, 2)
    assert res.weights == (0.0, 0.0, 0.0)
    assert torch.equal(res.aggregate, torch.zeros(3))


@pytest.mark.parametrize("bad", [0.0, math.nan, math.inf])
def test_fltrust_zero_or_nonfinite_server_update_does_not_raise(bad):
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    server = torch.zeros(5)
    server[1] = bad
    res = fltrust(x, server)
    assert "server update" in res.no_update
    assert res.scores == (0.0,) * 4 and res.weights == (0.0,) * 4
    assert torch.equal(res.aggregate, torch.zeros(5))


def test_fltrust_zero_and_nonfinite_rows_get_zero_trust():
    server = torch.tensor([1.0, 1.0])
    x = torch.tensor([[0.0, 0.0], [math.nan, 1.0], [math.inf, 1.0], [2.0, 1.0]])
    res = fltrust(x, server)
    assert res.scores[:3] == (0.0, 0.0, 0.0) and res.scores[3] > 0
    assert res.selected == (3,) and res.removed == (0, 1, 2)
    assert torch.isfinite(res.aggregate).all()


@pytest.mark.parametrize(
    ("dtype", "huge"),
    [(torch.float32, 1e38), (torch.float32, 3.4e38), (torch.float64, 1e300)],
)
def test_fltrust_huge_but_finite_row_never_takes_over(dtype, huge):
    gen = torch.Generator().manual_seed(1)
    server = torch.randn(64, generator=gen).to(dtype)
    x = (server + 0.3 * torch.randn(6, 64, generator=gen)).to(dtype)
    x[2] = huge * torch.sign(server)  # aligned, finite, enormous
    x[4] = -huge  # enormous the other way
    res = fltrust(x, server)
    assert torch.isfinite(res.aggregate).all()
    s_norm = float(server.double().norm())
    # a convex combination of vectors of norm ‖Δ_0‖ is at most ‖Δ_0‖ long
    assert float(res.aggregate.double().norm()) <= s_norm * (1 + 1e-5)
    assert res.weights[2] < 0.3  # its share is its trust, not its size
    expected = ref.ref_fltrust(x, server)
    assert res.scores == pytest.approx(expected.scores, abs=1e-12)
    close(res.aggregate, expected.aggregate, s_norm)


def test_fltrust_is_permutation_equivariant():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 13, generator=gen)
    server = torch.randn(13, generator=gen)
    perm = torch.randperm(9, generator=gen)
    a, b = fltrust(x, server), fltrust(x[perm], server)
    torch.testing.assert_close(a.aggregate, b.aggregate, rtol=1e-6, atol=1e-6)
    assert [b.scores[k] for k in range(9)] == pytest.approx(
        [a.scores[int(perm[k])] for k in range(9)]
    )
    assert sorted(int(perm[k]) for k in b.selected) == list(a.selected)


# --------------------------------------------------------------------- Zeno
TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, -1.0], dtype=torch.float64)


def quadratic(d: int):
    """f(p) = ‖p − c‖², batched on rows; and the same on one vector."""
    c = TARGET[:d]

    def batch(points: torch.Tensor) -> torch.Tensor:
        return ((points - c.to(points.dtype)) ** 2).sum(dim=-1)

    return batch, lambda p: float(((p.double() - c) ** 2).sum())


@pytest.mark.parametrize(("n", "d", "kind", "seed", "dtype"), list(cases()))
def test_zeno_equals_reference(n, d, kind, seed, dtype):
    x = make_rows(n, d, kind, seed, dtype)
    theta = make_rows(1, d, kind, seed + 7, dtype)[0]
    batch, one = quadratic(d)
    b = seed % n
    rho = (0.0, 0.05, 0.5)[seed % 3]
    fast = zeno(x, theta, batch, b, rho)
    expected = ref.ref_zeno(x, theta, one, b, rho)
    assert fast.scores == pytest.approx(expected.scores, rel=1e-5, abs=1e-4)
    if kind == "grid" or dtype == torch.float64:  # exact or near-exact scores
        assert fast.selected == expected.selected
        assert fast.removed == expected.removed
        close(fast.aggregate, expected.aggregate, float(x.double().abs().max()))
    assert len(fast.selected) == n - b and len(fast.removed) == b
    assert sum(fast.weights) == pytest.approx(1.0)


def test_zeno_sign_convention_prefers_descent():
    # θ = 0, minimum at TARGET: Δ towards it scores higher than −Δ.
    batch, _ = quadratic(6)
    step = 0.1 * TARGET
    x = torch.stack([-step, step, 2 * step, -2 * step])
    res = zeno(x, torch.zeros(6, dtype=torch.float64), batch, b=2, rho=0.0)
    assert res.selected == (1, 2) and res.removed == (0, 3)
    assert res.scores[1] > 0 > res.scores[0]


def test_zeno_norm_penalty_can_outweigh_the_loss_decrease():
    batch, _ = quadratic(6)
    theta = torch.zeros(6, dtype=torch.float64)
    x = torch.stack([0.1 * TARGET, 0.9 * TARGET])  # the big step decreases f more
    assert zeno(x, theta, batch, 1, rho=0.0).selected == (1,)
    assert zeno(x, theta, batch, 1, rho=1.0).selected == (0,)


def test_zeno_ties_keep_the_lowest_index():
    batch, _ = quadratic(2)
    row = torch.tensor([0.5, -0.5])
    x = torch.stack([row, -row, row, row, -row])
    res = zeno(x, torch.zeros(2), batch, b=2, rho=0.0)
    assert res.scores[0] == res.scores[2] == res.scores[3]
    assert res.selected == (0, 2, 3)
    res = zeno(torch.stack([row] * 4), torch.zeros(2), batch, b=3, rho=0.0)
    assert res.selected == (0,) and res.removed == (1, 2, 3)


def test_zeno_nonfinite_scores_rank_worst():
    def loss(points: torch.Tensor) -> torch.Tensor:
        out = (points**2).sum(dim=-1)
        return torch.where(points[:, 0] > 50, torch.full_like(out, math.nan), out)

    theta = torch.ones(3)
    x = torch.tensor([[100.0, 0, 0], [-0.5, 0, 0], [5.0, 5, 5], [-1.0, -1, -1]])
    res = zeno(x, theta, loss, b=2, rho=0.0)
    assert res.scores[0] == -math.inf
    assert res.selected == (1, 3) and res.removed == (0, 2)


@pytest.mark.parametrize(
    ("dtype", "huge"),
    [(torch.float32, 1e38), (torch.float32, 3.4e38), (torch.float64, 1e300)],
)
def test_zeno_huge_but_finite_row_never_takes_over(dtype, huge):
    batch, _ = quadratic(4)
    gen = torch.Generator().manual_seed(2)
    theta = torch.zeros(4, dtype=dtype)
    x = (0.1 * TARGET[:4] + 0.01 * torch.randn(5, 4, generator=gen).double()).to(dtype)
    x[1] = huge
    for rho in (0.0, 1e-3):
        res = zeno(x, theta, batch, b=1, rho=rho)
        assert res.removed == (1,)
        assert torch.isfinite(res.aggregate).all()
        assert float(res.aggregate.double().abs().max()) < 1.0


def test_zeno_is_permutation_equivariant():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    theta = torch.randn(6, generator=gen, dtype=torch.float64)
    batch, _ = quadratic(6)
    perm = torch.randperm(8, generator=gen)
    a, b = zeno(x, theta, batch, 3, 0.01), zeno(x[perm], theta, batch, 3, 0.01)
    torch.testing.assert_close(a.aggregate, b.aggregate)
    assert sorted(int(perm[k]) for k in b.selected) == list(a.selected)
    assert [b.scores[k] for k in range(8)] == pytest.approx(
        [a.scores[int(perm[k])] for k in range(8)]
    )


def test_zeno_arguments_are_checked():
    x, theta = torch.randn(3, 2), torch.zeros(2)
    batch, _ = quadratic(2)
    with pytest.raises(ValueError, match="zeno needs n >= f\\+1"):
        zeno(x, theta, batch, b=3, rho=0.0)
    with pytest.raises(ValueError, match="rho"):
        zeno(x, theta, batch, b=1, rho=-1.0)
    with pytest.raises(ValueError, match="loss_fn must map"):
        zeno(x, theta, lambda p: p.sum(), b=1, rho=0.0)
    res = zeno(x, theta, lambda p: float((p**2).sum()), 1, 0.0, batched=False)
    assert len(res.selected) == 2


def test_registry_and_bounds():
    assert RULES["fltrust"] is fltrust and RULES["zeno"] is zeno
    assert min_nodes("fltrust", 7) == 1 and min_nodes("zeno", 7) == 8
    assert STRATEGIES["fltrust"] is FLTrust and STRATEGIES["zeno"] is Zeno
    for name in ("fltrust", "zeno"):
        assert check_run_config({"strategy": name})["strategy"] == name
    with pytest.raises(RunConfigError, match="zeno-b-fraction"):
        check_run_config({"zeno-b-fraction": 1.0})


# --------------------------------------------------------------- strategies
NODES = [101, 102, 103, 104, 105, 106, 107]
FLIPPERS = {105, 106, 107}


task = sh.linear43_data


QV = task(3, 12)


@pytest.fixture(autouse=True)
def _identity():
    with sh.server_identity():
        yield


def honest_step(theta: dict, node: int) -> np.ndarray:
    x, y = task(node, 64)
    model = sh.Linear43()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in theta.items()})
    loss = nn.functional.cross_entropy(model(x), y)
    gw, gb = torch.autograd.grad(loss, [model.w, model.b])
    return -0.5 * torch.cat([gw.reshape(-1), gb]).numpy()


def run_round(strategy, theta: dict, server_round: int, step_of):
    msgs = sorted(
        sh.instructions(strategy, server_round, theta, NODES),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [
        sh.reply(
            m, sh.shifted(theta, step_of(m.metadata.dst_node_id)), {"num-examples": 10}
        )
        for m in msgs
    ]
    return strategy.aggregate_train(server_round, replies)


def sign_flip(theta):
    return lambda node: (-1 if node in FLIPPERS else 1) * honest_step(theta, node)


def test_fltrust_strategy_suspects_the_sign_flippers():
    strategy = FLTrust(model_factory=sh.Linear43, root_set=QV, trusted_lr=0.5)
    theta = sh.model_arrays(0)
    arrays, m = run_round(strategy, theta, 1, sign_flip(theta))
    assert m["status"] == int(RoundStatus.OK)
    assert set(m["suspected-node-ids"]) == FLIPPERS == set(m["removed-node-ids"])
    trust = dict(zip(m["node-ids"], m["scores"], strict=True))
    assert all(trust[n] == 0 for n in FLIPPERS)
    assert all(trust[n] > 0 for n in NODES if n not in FLIPPERS)
    assert m["server-update-norm"] > 0
    moved = sh.record_flat(arrays) - sh.record_flat(strategy._sent.record)
    assert np.linalg.norm(moved) <= m["server-update-norm"] * (1 + 1e-5)


def test_fltrust_strategy_zero_trust_keeps_the_model_and_says_why():
    strategy = FLTrust(model_factory=sh.Linear43, root_set=QV, trusted_lr=0.5)
    theta = sh.model_arrays(0)
    delta0 = strategy.worker.update(
        torch.as_tensor(np.concatenate([theta["w"].ravel(), theta["b"]])),
        torch.Generator().manual_seed(0),
    ).numpy()
    arrays, m = run_round(strategy, theta, 1, lambda node: -delta0)
    assert m["status"] == int(RoundStatus.NO_UPDATE)
    assert "zero total trust" in strategy.history[-1].message
    assert np.array_equal(sh.record_flat(arrays), sh.record_flat(strategy._sent.record))
    assert sorted(m["suspected-node-ids"]) == NODES
    assert m["weights"] == [0.0] * len(NODES)


def test_zeno_strategy_discards_b_and_repeats_for_a_seed():
    theta = sh.model_arrays(0)
    seen = []
    for _ in range(2):
        strategy = Zeno(
            model_factory=sh.Linear43,
            qv_set=QV,
            num_malicious_nodes=3,
            rho=1e-3,
            batch_size=4,
            seed=5,
        )
        arrays, m = run_round(strategy, theta, 1, sign_flip(theta))
        seen.append((sh.record_flat(arrays), list(m["scores"])))
        assert m["status"] == int(RoundStatus.OK)
        assert set(m["suspected-node-ids"]) == FLIPPERS == set(m["removed-node-ids"])
        assert m["zeno-batch-size"] == 4 and len(m["scores"]) == len(NODES)
    assert np.array_equal(seen[0][0], seen[1][0]) and seen[0][1] == seen[1][1]
    assert not torch.equal(strategy.batch_indices(1), strategy.batch_indices(2))


def test_zeno_strategy_accepts_a_majority_budget():
    strategy = Zeno(model_factory=sh.Linear43, qv_set=QV, malicious_fraction=0.7)
    assert strategy.resolve_f(10) == 7 and strategy.min_nodes(7) == 8
    with pytest.raises(ValueError, match="needs b"):
        Zeno(model_factory=sh.Linear43, qv_set=QV)
    with pytest.raises(ValueError, match="malicious_fraction"):
        Zeno(model_factory=sh.Linear43, qv_set=QV, malicious_fraction=1.0)


@pytest.mark.parametrize("seed", [-1, True, 1.5])
def test_a_bad_seed_is_refused_naming_it(seed):
    with pytest.raises(ValueError, match=f"seed={seed!r}: allowed values are"):
        FLTrust(model_factory=sh.Linear43, root_set=QV, seed=seed)
