"""GAA's collusion discount: near-identical updates share one voice.

Colluders who read the evidence policy send one identical update (ascent on their
data, orthogonal to descent on their own samples of the QV distribution); without
the discount their identical unit directions own the consensus reference, and the
honest workers of other regions read as the outliers.
"""

from __future__ import annotations

import pytest
import torch
from resume_helpers import run_gaa_in_process

from flwr_byz.gaa.evidence_policy import EvidencePolicy, collusion_voices
from flwr_byz.gaa.observation import Observation


def test_identical_rows_share_one_voice_and_distinct_rows_keep_theirs() -> None:
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(7, 5000, generator=gen)
    colluder = torch.randn(5000, generator=gen)
    noisy = colluder + 0.05 * colluder.norm() / 5000**0.5 * torch.randn(
        3, 5000, generator=gen
    )
    voices = collusion_voices(torch.cat([honest, colluder.repeat(3, 1)]), 0.9)
    torch.testing.assert_close(voices, torch.tensor([1.0] * 7 + [1 / 3] * 3))
    near = collusion_voices(torch.cat([honest, noisy]), 0.9)
    assert torch.all(near[:7] == 1.0) and torch.all(near[7:] < 0.4)
    # 1 turns the discount off; float32 extremes cannot overflow the cosines.
    assert torch.all(collusion_voices(colluder.repeat(3, 1), 1.0) == 1.0)
    huge = torch.tensor([[3e38, 3e38], [3e38, 3e38], [1.0, -1.0]])
    torch.testing.assert_close(collusion_voices(huge, 0.9), torch.tensor([0.5, 0.5, 1]))


def _byzantine_share(results: dict, parts: str, values: str) -> float:
    """The attackers' sum of ``values`` (per ``parts`` partition) in the last round."""
    byzantine = set(results["ground-truth"]["byzantine-partition-ids"])
    last = results["rounds"][-1]
    return sum(
        v for p, v in zip(last[parts], last[values], strict=True) if p in byzantine
    )


def _byzantine_credit_share(threshold: float, tmp_path) -> float:
    overrides = {
        "attack": "qv-orthogonal",
        "byzantine-fraction": 0.3,
        "num-server-rounds": 10,
        "gaa-collusion-threshold": threshold,
    }
    results = run_gaa_in_process(overrides, tmp_path / f"run-{threshold}")
    return _byzantine_share(results, "credit-partitions", "credits")


@pytest.mark.slow
def test_three_identical_colluders_lose_their_credit_only_with_the_discount(
    tmp_path,
) -> None:
    # Measured: 0.034 with the discount, 0.316 without (their 30 % kept).
    assert _byzantine_credit_share(0.95, tmp_path) < 0.1
    assert _byzantine_credit_share(1.0, tmp_path) > 0.2


def _final_accuracy(overrides: dict, tmp_path) -> float:
    return run_gaa_in_process(overrides, tmp_path / "run")["summary"]["final-accuracy"]


@pytest.mark.slow
def test_a_majority_of_similar_updates_cannot_own_the_step(tmp_path) -> None:
    # Fang et al.'s trimmed-mean attack: seven similar (not identical) updates
    # beyond every honest value, against the honest mean's sign. They share
    # about 2.4 voices, so the consensus reference stays balanced and never goes
    # uphill; the step the credits would take counts each worker and does.
    # Measured (seeds 0-2): 82.8 / 85.1 / 85.8; with the reference's verdict
    # alone 56.0 / 79.5 / 86.2 (FedAvg without attack: 84.7 / 86.1 / 85.1).
    overrides = {"attack": "fang-trim", "byzantine-fraction": 0.7}
    assert _final_accuracy(overrides, tmp_path) > 0.75


def test_identical_colluders_keep_their_credit_but_weigh_as_one_voice(
    tmp_path,
) -> None:
    # Min-max at β = 0.7: seven colluders send one update inside the honest
    # spread, so the evidence leaves them their credit; the aggregate weighs
    # their seven copies as one voice. Measured in round 4: credit 0.70,
    # aggregation weight 0.25 (one voice of four), 0.70 without the discount.
    overrides = {
        "attack": "min-max",
        "byzantine-fraction": 0.7,
        "num-server-rounds": 4,
        "seed": 1,
    }
    results = run_gaa_in_process(overrides, tmp_path / "run")
    credit = _byzantine_share(results, "credit-partitions", "credits")
    weight = _byzantine_share(results, "partitions", "weights")
    assert credit > 0.6
    assert weight < 0.3


def test_only_copies_share_a_weight_in_the_aggregate() -> None:
    # Honest updates from a fresh model align at up to about 0.995 (all follow
    # the label prior); they keep a whole weight each, copies share one.
    gen = torch.Generator().manual_seed(1)
    common = torch.randn(4000, generator=gen)
    spread = 0.1 * common.norm() / 4000**0.5
    honest = common + spread * torch.randn(4, 4000, generator=gen)
    copies = torch.randn(4000, generator=gen).repeat(3, 1)
    updates = torch.cat([honest, copies])
    cos = torch.nn.functional.cosine_similarity(honest[0], honest[1], dim=0)
    assert 0.98 < float(cos) < 0.999
    obs = Observation(tuple(range(7)), updates, torch.zeros(4000), torch.tensor(1.0))
    voices = EvidencePolicy().aggregate_log_voices(obs).exp()
    torch.testing.assert_close(voices, torch.tensor([1.0] * 4 + [1 / 3] * 3))
    # The references merge the aligned honest rows too (threshold 0.95) ...
    assert torch.all(EvidencePolicy().log_voices(obs).exp()[:4] < 0.5)
    # ... and threshold 1 turns both discounts off.
    off = EvidencePolicy(collusion_threshold=1.0).aggregate_log_voices(obs)
    assert torch.all(off == 0)
