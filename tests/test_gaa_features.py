"""GAA's evidence features (flwr_byz.gaa.features) against plain float64 references.

The features are computed in one chunked read of the update matrix (norms and dot
products accumulated in float64), ``cos-median`` on the aggregation's column sample,
and the policy's consensus direction without a normalised copy of the matrix; each
must equal the whole-matrix formula it replaces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz.aggregation.distances import sample_columns
from flwr_byz.gaa import EvidencePolicy, Observation, evidence_features
from flwr_byz.gaa import features as feats_mod
from flwr_byz.gaa.evidence_policy import helpful_gain_capped
from flwr_byz.gaa.features import FEATURE_NAMES, row_statistics, vector_median


def _cos64(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    x64, r64 = x.double(), ref.double()
    return x64 @ r64 / (x64.norm(dim=1) * r64.norm() + 1e-12)


def _median64(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.median(x.double().numpy(), axis=0))


def _inputs(m: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(m, d, generator=g) * torch.rand(m, 1, generator=g)
    updates[: m // 3] += 0.5 * torch.randn(1, d, generator=g)  # a common direction
    grad = torch.randn(d, generator=g)
    solo = 1.0 + 0.1 * torch.randn(m, generator=g)
    return updates, torch.tensor(1.0), grad, solo


def _observation(updates, f0, grad, solo) -> Observation:
    """The round's observation of ``updates`` (θ_t = 0; node ids 0…m−1)."""
    m, d = updates.shape
    features = evidence_features(updates, f0, grad, solo)
    return Observation(tuple(range(m)), updates, torch.zeros(d), f0, features)


@pytest.mark.parametrize("m, d", [(7, 300), (10, 5_000), (40, 70_000)])
def test_features_equal_the_whole_matrix_float64_formulas(
    m: int, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: several per matrix, so the accumulation across chunks counts.
    monkeypatch.setattr(feats_mod, "_CHUNK_VALUES", 4096)
    updates, f0, grad, solo = _inputs(m, d)
    got = evidence_features(updates, f0, grad, solo).double()
    col = FEATURE_NAMES.index
    torch.testing.assert_close(
        got[:, col("cos-qv-descent")], _cos64(updates, -grad), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        got[:, col("cos-mean")], _cos64(updates, updates.mean(0)), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        got[:, col("log-norm")],
        torch.log(updates.double().norm(dim=1)),
        rtol=0,
        atol=1e-6,
    )
    sample = sample_columns(updates)
    torch.testing.assert_close(
        got[:, col("cos-median")],
        _cos64(sample, _median64(sample)),
        rtol=0,
        atol=1e-6,
    )
    if d <= 2048:  # the sample is every column: the plain coordinate median
        assert sample.shape[1] == d
        torch.testing.assert_close(
            got[:, col("cos-median")],
            _cos64(updates, _median64(updates)),
            rtol=0,
            atol=1e-6,
        )


def test_cos_median_on_the_sample_is_close_to_the_whole_median() -> None:
    updates, f0, grad, solo = _inputs(30, 200_000, seed=3)
    sampled = evidence_features(updates, f0, grad, solo)[
        :, FEATURE_NAMES.index("cos-median")
    ]
    whole = _cos64(updates, _median64(updates)).float()
    assert sample_columns(updates).shape[1] == 6144  # 12 blocks: ≈ 1/32 of them
    # Standard error √((1 − cos²)/k) ≈ 0.013 on 6,144 columns: 4 of them.
    assert (sampled - whole).abs().max() < 0.05


def test_row_statistics_stay_finite_on_huge_finite_rows() -> None:
    x = torch.full((3, 1000), 1e30)
    x[1] = -1e30
    x[2] = 1.0
    norms, dots = row_statistics(x, x[2:3])
    assert torch.isfinite(norms).all() and torch.isfinite(dots).all()
    assert float(norms[0]) == pytest.approx(1e30 * 1000**0.5, rel=1e-6)
    assert float(dots[1, 0]) == pytest.approx(-1e33, rel=1e-6)


@pytest.mark.parametrize(
    "values",
    [[3.0], [2.0, 1.0], [5.0, 1.0, 4.0], [1.0, 1.0, 2.0, 9.0], [7.0, -1.0, 7.0, 7.0]],
)
def test_vector_median_is_numpys(values: list[float]) -> None:
    v = torch.tensor(values, dtype=torch.float64)
    assert float(vector_median(v)) == float(np.median(values))


def test_policy_consensus_equals_unit_directions_weighted_by_credit() -> None:
    """The policy's last input, cos(Δ_i, credit-weighted mean of unit Δ's), from its
    own weights: no normalised copy of the matrix, the same cosine. Previous
    log-credits within the slack of the best count alike in the reference."""
    updates, f0, grad, solo = _inputs(9, 4_000, seed=5)
    updates[2] *= 1e3  # a huge row must count as one direction, not by its size
    obs = _observation(updates, f0, grad, solo)
    policy = EvidencePolicy(reference_gain=0.0)
    prev = torch.linspace(-12.0, 0.0, 9)  # beyond the slack at the low end
    x = policy.inputs(obs, prev)
    # The reference's weights, as the policy computes them (no QV lean here).
    pre = x[:, :-1] @ policy.head.weight[0, :-1]
    pre = -torch.relu(pre.max() - pre - policy.slack)
    gated = -torch.relu(prev.max() - prev - policy.slack)
    w = torch.softmax(gated + pre, 0).double()
    unit = updates.double() / updates.double().norm(dim=1, keepdim=True)
    ref = w @ unit
    expected = unit @ ref / ref.norm()
    torch.testing.assert_close(x[:, -1].double(), expected, rtol=0, atol=1e-5)


def test_solo_qv_losses_by_blocks_of_rows_equal_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch import nn

    from flwr_byz.gaa import QVObjective
    from flwr_byz.gaa import qv as qv_mod

    def factory() -> nn.Module:
        return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=g)
    objective = QVObjective(factory, (x, torch.arange(12) % 3))
    theta = torch.randn(objective.dim, generator=g)
    steps = torch.randn(11, objective.dim, generator=g)
    whole = objective.batch(theta.unsqueeze(0) + 0.5 * steps)
    monkeypatch.setattr(qv_mod, "STEP_BLOCK_VALUES", 3 * objective.dim)  # 4 blocks
    by_blocks = objective.steps(theta, steps, 0.5)
    assert by_blocks.shape == (11,)
    torch.testing.assert_close(by_blocks, whole, rtol=0, atol=1e-6)


def test_a_row_whose_norm_overflows_float32_has_no_direction_not_nan() -> None:
    """A finite row of 3e38s: its float32 norm is inf, its dot product with the
    consensus may be too (inf · 0 = NaN); it must read as no direction, and no
    other input may turn NaN (a Hypothesis example found the NaN credits)."""
    updates, f0, grad, solo = _inputs(6, 3_000, seed=7)
    # Aligned with the others: its dot product with their consensus overflows.
    updates[4] = 3e38 * torch.sign(updates[[0, 1, 2, 3, 5]].mean(0))
    obs = _observation(updates, f0, grad, solo)
    assert torch.isfinite(obs.features).all()
    policy = EvidencePolicy()
    x = policy.inputs(obs, torch.zeros(6))
    assert torch.isfinite(x).all()
    assert float(x[4, -1].detach()) == 0.0
    assert torch.isfinite(policy(obs, torch.zeros(6))).all()


def test_help_beyond_the_trusted_helpers_median_earns_nothing_harm_counts_in_full():
    gain = torch.tensor([-3.0, -0.5, 0.2, 0.4, 0.9, 5.0, 6.0])
    scaled = torch.tensor([-2.0, -0.1, 0.5, 1.0, 2.0, 5.0, 5.0])  # uncentred sign
    trust = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0])  # 5.0, 6.0 untrusted
    # Trusted helpers 0.2, 0.4, 0.9: the cap is 0.4 (0.9 counting the untrusted).
    expected = torch.tensor([-3.0, -0.5, 0.2, 0.4, 0.4, 0.4, 0.4])
    torch.testing.assert_close(helpful_gain_capped(gain, scaled, trust), expected)
    # Nobody helps: nothing to cap.
    torch.testing.assert_close(helpful_gain_capped(gain, -scaled.abs(), trust), gain)
    # Every helper untrusted: they count alike rather than by underflowed weights.
    zero = torch.zeros(7)
    torch.testing.assert_close(
        helpful_gain_capped(gain, scaled, zero),
        gain.clamp(max=0.9),  # median of 0.2, 0.4, 0.9, 5.0, 6.0
    )


def test_the_policy_reads_the_capped_gain():
    """Two rows alike but for help beyond the cap get the same score."""
    updates, f0, grad, solo = _inputs(6, 500, seed=2)
    updates[5] = updates[4]
    obs = _observation(updates, f0, grad, solo)
    feats = obs.features.clone()
    k = FEATURE_NAMES.index("qv-gain")
    feats[:, FEATURE_NAMES.index("qv-gain-scaled")] = 1.0  # everyone helps
    feats[:, k] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 3.0])
    obs = Observation(obs.node_ids, obs.updates, obs.theta, obs.qv_loss, feats)
    x = EvidencePolicy().inputs(obs, torch.zeros(6))
    assert float(x[4, 0]) == float(x[5, 0]) == pytest.approx(0.3)


def test_features_stay_finite_when_the_float32_sum_of_rows_overflows():
    """Two finite rows near float32's largest value: their mean is finite, their
    float32 sum is not (found by Hypothesis: every credit became NaN)."""
    top = torch.finfo(torch.float32).max
    updates = torch.full((5, 8), 0.01)
    updates[0] = top
    updates[1] = top / 2
    solo = torch.full((5,), 0.5)
    feats = evidence_features(updates, torch.tensor(0.6), torch.ones(8), solo)
    assert torch.isfinite(feats).all()
