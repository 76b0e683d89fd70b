"""Tampering algorithms, role schedules and attack configuration (pure functions)."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flwr_byz.attacks import (
    ATTACK_DEFAULTS,
    ATTACKS,
    PretenseRole,
    RandomizedRole,
    StaticRole,
    adaptive_fault_gradient,
    alie,
    alie_z,
    attack_generator,
    byzantine_partitions,
    check_attack_config,
    ipm,
    label_flip,
    min_max,
    min_sum,
    random_fault,
    resolve_side,
    role_for,
    scaling,
    sign_flip,
    tamper_update,
    uniform_noise,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _honest(h: int = 7, d: int = 50, seed: int = 1) -> torch.Tensor:
    g = _gen(seed)
    return torch.randn(h, d, generator=g, dtype=torch.float64) * 0.3 + 0.1


# ----------------------------------------------------------------------------------
# update-only tampering
# ----------------------------------------------------------------------------------


def test_sign_flip_is_minus_delta() -> None:
    delta = torch.randn(1000, generator=_gen())
    assert torch.equal(sign_flip(delta), -delta)


def test_scaling_multiplies() -> None:
    delta = torch.randn(100, generator=_gen())
    assert torch.allclose(scaling(delta, 7.5), 7.5 * delta)


def test_random_fault_sample_mean_and_std() -> None:
    delta = torch.zeros(200_000, dtype=torch.float64)
    lr = 0.5
    out = random_fault(delta, _gen(3), mean=0.5, std=2e-6, learning_rate=lr)
    # The attacker's gradient g ~ N(0.5, (2e-6)^2) is sent as the update -lr * g.
    g = out / -lr
    se = 2e-6 / math.sqrt(delta.numel())
    assert abs(float(g.mean()) - 0.5) < 5 * se
    assert float(g.std()) == pytest.approx(2e-6, rel=0.02)
    # Independent of the honest update: only its shape/dtype matter.
    other = random_fault(
        torch.randn(200_000, dtype=torch.float64), _gen(3), 0.5, 2e-6, lr
    )
    assert torch.equal(out, other)


def test_random_fault_replays_per_seed_node_round() -> None:
    delta = torch.zeros(64)
    a = random_fault(delta, attack_generator(5, 2, 7), 0.5, 1.0)
    b = random_fault(delta, attack_generator(5, 2, 7), 0.5, 1.0)
    c = random_fault(delta, attack_generator(5, 2, 8), 0.5, 1.0)
    d = random_fault(delta, attack_generator(5, 3, 7), 0.5, 1.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)


def test_uniform_noise_range_mean_std() -> None:
    delta = torch.zeros(100_000, dtype=torch.float64)
    lr = 0.1
    out = uniform_noise(delta, _gen(4), bound=0.25, learning_rate=lr)
    g = out / -lr
    assert float(g.min()) >= -0.25
    assert float(g.max()) <= 0.25
    assert abs(float(g.mean())) < 5 * 0.25 / math.sqrt(3 * delta.numel())
    assert float(g.std()) == pytest.approx(0.25 / math.sqrt(3), rel=0.02)


def test_tamper_update_dispatches_with_config() -> None:
    delta = torch.randn(10, generator=_gen(), dtype=torch.float64)
    cfg = {"scale-factor": -3.0}
    assert torch.allclose(tamper_update("scaling", delta, cfg, _gen(), 1.0), -3 * delta)
    assert torch.equal(tamper_update("sign-flip", delta, {}, _gen(), 1.0), -delta)
    with pytest.raises(ValueError, match="alie"):
        tamper_update("alie", delta, {}, _gen(), 1.0)


def test_label_flip_changes_labels_only() -> None:
    features = torch.randn(30, 4, generator=_gen())
    labels = torch.arange(30) % 10
    before = features.clone()
    flipped = label_flip(labels, 10)
    assert torch.equal(flipped, 9 - labels)
    assert torch.equal(label_flip(flipped, 10), labels)
    assert torch.equal(features, before)
    assert torch.equal(label_flip(torch.tensor([0, 1, 1]), 2), torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="num_classes=2"):
        label_flip(torch.tensor([0, 2]), 2)


# ----------------------------------------------------------------------------------
# omniscient tampering
# ----------------------------------------------------------------------------------


def test_alie_z_matches_baruch() -> None:
    # n = 10, f = 3: s = floor(10/2 + 1) - 3 = 3, z = Phi^-1(7/10).
    assert alie_z(10, 3) == pytest.approx(NormalDist().inv_cdf(0.7))
    # n = 50, f = 12: s = 14, z = Phi^-1(36/50).
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(0.72))
    assert math.isfinite(alie_z(10, 9))


def test_alie_inside_mean_pm_z_std() -> None:
    x = _honest()
    z = alie_z(10, 3)
    out = alie(x, z)
    mean, std = x.mean(0), x.std(0, correction=0)
    assert torch.all(out >= mean - z * std - 1e-12)
    assert torch.all(out <= mean + z * std + 1e-12)
    assert torch.allclose(out, mean - z * std)


def test_ipm_is_minus_epsilon_mean() -> None:
    x = _honest()
    assert torch.allclose(ipm(x, 0.5), -0.5 * x.mean(0))
    assert torch.allclose(ipm(x, 100.0), -100.0 * x.mean(0))


@pytest.mark.parametrize("perturbation", ["std", "unit-vec", "sign"])
def test_min_max_respects_and_meets_its_bound(perturbation: str) -> None:
    x = _honest(9, 40, seed=perturbation.__len__())
    out = min_max(x, perturbation)
    d_max = torch.cdist(x, x).max()
    dist = torch.linalg.vector_norm(x - out, dim=1).max()
    assert dist <= d_max * (1 + 1e-9)
    assert dist == pytest.approx(float(d_max), rel=1e-6)  # the largest γ: tight
    assert not torch.allclose(out, x.mean(0))


@pytest.mark.parametrize("perturbation", ["std", "unit-vec", "sign"])
def test_min_sum_respects_and_meets_its_bound(perturbation: str) -> None:
    x = _honest(9, 40, seed=2 + perturbation.__len__())
    out = min_sum(x, perturbation)
    budget = (torch.cdist(x, x) ** 2).sum(1).max()
    total = (torch.linalg.vector_norm(x - out, dim=1) ** 2).sum()
    assert total <= budget * (1 + 1e-9)
    assert float(total) == pytest.approx(float(budget), rel=1e-6)


def test_min_max_identical_updates_send_the_mean() -> None:
    x = torch.ones(4, 6, dtype=torch.float32)
    assert torch.equal(min_max(x), torch.ones(6))
    assert min_max(x).dtype == torch.float32


# ----------------------------------------------------------------------------------
# adaptive fault
# ----------------------------------------------------------------------------------


def _task(seed: int = 0) -> tuple[nn.Module, tuple, tuple]:
    g = _gen(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 2))
    x0 = torch.randn(40, 5, generator=g) + 1.0
    x1 = torch.randn(60, 5, generator=g) - 1.0
    d0 = (x0, torch.zeros(40, dtype=torch.long))
    d1 = (x1, torch.ones(60, dtype=torch.long))
    return model, d0, d1


def test_adaptive_fault_is_gradient_of_d0_minus_alpha_d1() -> None:
    model, d0, d1 = _task()
    params = list(model.parameters())
    got = adaptive_fault_gradient(model, d0, d1, alpha=10.0)
    g0 = torch.autograd.grad(F.cross_entropy(model(d0[0]), d0[1]), params)
    g1 = torch.autograd.grad(F.cross_entropy(model(d1[0]), d1[1]), params)
    for a, b0, b1 in zip(got, g0, g1, strict=True):
        assert torch.allclose(a, b0 - 10.0 * b1, atol=1e-6)
    assert all(p.grad is None for p in params)


def test_adaptive_fault_lowers_d0_loss_and_raises_d1_loss() -> None:
    model, d0, d1 = _task(1)
    with torch.no_grad():
        l0, l1 = (
            F.cross_entropy(model(d0[0]), d0[1]),
            F.cross_entropy(model(d1[0]), d1[1]),
        )
    for _ in range(5):  # five FedSGD updates Δ = −λ V
        grads = adaptive_fault_gradient(model, d0, d1, alpha=10.0)
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p.sub_(0.01 * g)
    with torch.no_grad():
        n0, n1 = (
            F.cross_entropy(model(d0[0]), d0[1]),
            F.cross_entropy(model(d1[0]), d1[1]),
        )
    assert n0 < l0
    assert n1 > l1


# ----------------------------------------------------------------------------------
# role schedules
# ----------------------------------------------------------------------------------


def test_static_role_every_round() -> None:
    assert all(StaticRole().is_byzantine(t) for t in range(1, 101))


@pytest.mark.parametrize("rounds", [0, 1, 7])
def test_pretense_role_honest_first_l_rounds(rounds: int) -> None:
    role = PretenseRole(rounds)
    got = [t for t in range(1, 21) if role.is_byzantine(t)]
    assert got == list(range(rounds + 1, 21))


def test_randomized_q1_inverts_every_period() -> None:
    role = RandomizedRole(initial_byzantine=True, period=3, probability=1.0, seed=4)
    got = [role.is_byzantine(t) for t in range(1, 13)]
    assert got == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3


def test_randomized_q0_keeps_initial_role() -> None:
    role = RandomizedRole(initial_byzantine=False, period=2, probability=0.0, seed=4)
    assert not any(role.is_byzantine(t) for t in range(1, 50))


def test_randomized_changes_only_at_period_starts_with_rate_q() -> None:
    p, q, periods = 5, 0.3, 2000
    role = RandomizedRole(True, p, q, seed=11, node=3)
    seq = [role.is_byzantine(t) for t in range(1, p * periods + 1)]
    changes = [t for t in range(2, len(seq) + 1) if seq[t - 1] != seq[t - 2]]
    assert all((t - 1) % p == 0 for t in changes)
    rate = len(changes) / (periods - 1)
    assert abs(rate - q) < 4 * math.sqrt(q * (1 - q) / periods)


def test_randomized_replays_per_seed_and_node() -> None:
    def seq(seed: int, node: int) -> list[bool]:
        role = RandomizedRole(True, 2, 0.5, seed=seed, node=node)
        return [role.is_byzantine(t) for t in range(1, 200)]

    assert seq(1, 2) == seq(1, 2)
    assert seq(1, 2) != seq(1, 3)
    assert seq(1, 2) != seq(2, 2)
    # A pure function of the round: asking out of order gives the same answers.
    role = RandomizedRole(True, 2, 0.5, seed=1, node=2)
    assert [role.is_byzantine(t) for t in reversed(range(1, 200))] == seq(1, 2)[::-1]


def test_role_for_reads_the_run_config() -> None:
    assert isinstance(role_for({}, 0), StaticRole)
    pre = role_for({"attack-pattern": "pretense", "pretense-rounds": 4}, 0)
    assert pre == PretenseRole(4)
    rnd = role_for(
        {
            "attack-pattern": "randomized",
            "flip-period": 3,
            "flip-probability": 1.0,
            "seed": 2,
        },
        5,
    )
    assert [rnd.is_byzantine(t) for t in (1, 3, 4, 7)] == [True, True, False, True]
    # Initial Byzantine probability 0: every node starts honest.
    cold = role_for(
        {
            "attack-pattern": "randomized",
            "initial-byzantine-probability": 0.0,
            "flip-probability": 0.0,
        },
        5,
    )
    assert not cold.is_byzantine(1)


# ----------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------


def test_defaults_are_valid_and_cover_every_attack() -> None:
    check_attack_config({})
    check_attack_config(ATTACK_DEFAULTS)
    for attack in ATTACKS:
        check_attack_config({"attack": attack})


@pytest.mark.parametrize(
    ("cfg", "key", "hint"),
    [
        ({"attack": "bogus"}, "attack", "random-fault"),
        ({"byzantine-fraction": 1.0}, "byzantine-fraction", "[0, 1)"),
        ({"byzantine-fraction": -0.1}, "byzantine-fraction", "[0, 1)"),
        ({"pretense-rounds": -1}, "pretense-rounds", ">= 0"),
        ({"flip-probability": 1.5}, "flip-probability", "[0, 1]"),
        ({"flip-period": 0}, "flip-period", ">= 1"),
        ({"attack-pattern": "sometimes"}, "attack-pattern", "randomized"),
        ({"attack": "alie", "attack-side": "client"}, "attack-side", "server"),
        ({"attack": "label-flip", "attack-side": "server"}, "attack-side", "client"),
        ({"byzantine-partitions": "1,x"}, "byzantine-partitions", "0,3,5"),
        ({"perturbation": "max"}, "perturbation", "unit-vec"),
        ({"noise-std": -1.0}, "noise-std", ">= 0"),
    ],
)
def test_bad_config_names_key_value_and_valid_values(
    cfg: dict, key: str, hint: str
) -> None:
    with pytest.raises(ValueError) as err:
        check_attack_config(cfg)
    message = str(err.value)
    assert key in message
    assert repr(cfg[key]) in message
    assert hint in message


def test_resolve_side() -> None:
    assert resolve_side({}) == "none"
    assert resolve_side({"attack": "random-fault"}) == "client"
    assert resolve_side({"attack": "alie"}) == "server"
    assert resolve_side({"attack": "sign-flip", "attack-side": "server"}) == "server"


def test_byzantine_partitions_from_fraction_and_seed() -> None:
    cfg = {"attack": "random-fault", "byzantine-fraction": 0.3, "seed": 7}
    ids = byzantine_partitions(cfg, 10)
    assert len(ids) == 3
    assert ids == sorted(set(ids))
    assert all(0 <= i < 10 for i in ids)
    assert byzantine_partitions(cfg, 10) == ids
    draws = {tuple(byzantine_partitions({**cfg, "seed": s}, 10)) for s in range(10)}
    assert len(draws) > 1
    # floor(fraction · n), without float error: 0.29 · 100 -> 29, 0.3 · 32 -> 9.
    assert len(byzantine_partitions({**cfg, "byzantine-fraction": 0.29}, 100)) == 29
    assert len(byzantine_partitions(cfg, 32)) == 9


def test_byzantine_partitions_explicit_and_none() -> None:
    cfg = {"attack": "sign-flip", "byzantine-partitions": "5, 0,3"}
    assert byzantine_partitions(cfg, 10) == [0, 3, 5]
    with pytest.raises(ValueError, match="byzantine-partitions"):
        byzantine_partitions(cfg, 5)
    assert byzantine_partitions({"byzantine-fraction": 0.5}, 10) == []
