"""GAA's mechanisms, each by the behaviour it exists for (not by its formula).

* the decay of old evidence: a node that attacked and then turns honest earns its
  credit back, while nodes that keep attacking stay at the bottom;
* the slack gates (the evidence's and the consensus reference's): honest clients
  that differ (other regions, other label mixes) keep their credit instead of
  the credit collapsing onto the QV set's favourite;
* the policy's learning with the default optimiser (Adam) and the evidence prior:
  ψ moves, each step lowers the episode loss it learnt from, and the run ends
  with a lower QV loss than the same run without learning.

Driven through :class:`flwr_byz.gaa.GAAAgent` with real models and real client
gradients (no Flower run: a round is a fraction of a second).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch
from torch import nn

from flwr_byz.data.generated import generate_qv_pool, generate_region
from flwr_byz.data.spec import HEALTHCARE_STYLE
from flwr_byz.gaa import GAAAgent, QVObjective
from flwr_byz.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------ toy task
_IN, _HIDDEN = 32, 10
_W = torch.randn(_IN, 2, generator=torch.Generator().manual_seed(7))


def toy() -> nn.Module:
    """32 features, 10 sigmoid units, 2 classes (the Yelp-style MLP, smaller)."""
    return nn.Sequential(nn.Linear(_IN, _HIDDEN), nn.Sigmoid(), nn.Linear(_HIDDEN, 2))


def region(k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` samples of region ``k``: its own covariate shift, one shared labelling."""
    g = torch.Generator().manual_seed(1000 + k)
    shift = 0.5 * torch.randn(_IN, generator=g)
    x = torch.randn(m, _IN, generator=g) + shift
    return x, ((x - shift) @ _W + 0.8 * torch.randn(m, 2, generator=g)).argmax(1)


def mixed_qv() -> tuple[torch.Tensor, torch.Tensor]:
    """The GAA paper's QV set: one fresh sample of each client region 0..9."""
    samples = [tuple(t[200:] for t in region(k, 201)) for k in range(10)]
    return torch.cat([x for x, _ in samples]), torch.cat([y for _, y in samples])


def toy_theta() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([v.reshape(-1) for v in toy().state_dict().values()])


# ------------------------------------------------------------------ decay
def test_a_reformed_node_earns_its_credit_back_and_attackers_stay_out():
    """Node 2 sends −Δ for 3 rounds, then its honest Δ; nodes 5 and 9 keep
    sending −Δ. The decay lets old evidence fade: within 32 honest rounds node 2
    is back within 10× the median honest credit (measured: 6×; pure
    accumulation, ``prev + evidence``, keeps it below 1e-15 for ever), and the
    recovery never stalls. The prior is frozen (``policy_lr=0``): the recurrence
    alone decides."""
    lr, reformed, persistent, bad_rounds = 0.3, 2, (5, 9), 3
    clients = [QVObjective(toy, region(k, 200)) for k in range(10)]
    agent = GAAAgent(QVObjective(toy, mixed_qv()), policy_lr=0.0)
    theta = toy_theta()
    ratio, attackers = [], []
    for r in range(35):
        updates = torch.stack([-lr * c.value_and_grad(theta)[1] for c in clients])
        flipped = [*persistent, *([reformed] if r < bad_rounds else [])]
        updates[flipped] *= -1
        theta = theta + agent.step(theta, updates, list(range(10))).aggregate
        credits = agent.credits()
        honest = [v for i, v in credits.items() if i not in (reformed, *persistent)]
        median = float(torch.tensor(honest).median())
        ratio.append(credits[reformed] / median)
        attackers.append(max(credits[i] for i in persistent) / median)
    assert max(ratio[:bad_rounds]) < 1e-4, ratio  # it lost its credit while attacking
    assert ratio[-1] >= 0.1, ratio
    blocks = ratio[bad_rounds + 2 :: 5]
    assert all(b > a for a, b in itertools.pairwise(blocks)), ratio
    assert max(attackers[bad_rounds:]) < 1e-6, attackers
    assert sorted(agent.detect(2)) == list(persistent)


# ------------------------------------------------------------------ the norm reference
@pytest.mark.parametrize("direction", ["uphill", "downhill"])
def test_a_minority_of_tiny_updates_cannot_set_the_norm_reference(direction):
    """Nodes 0, 4 and 7 each send their own 10⁻⁶-sized update: against the honest
    mean's sign (Fang et al.'s attack on Krum with λ near zero) or along the
    honest mean (free riders), each with its own noise so that they keep a voice
    each. Updates too small to move the QV loss do not set the norm reference, so
    no honest norm reads as excessive: every honest node keeps at least half an
    equal share of the credit and the model learns (measured: QV loss down 0.018
    and 0.015 in 10 rounds). Without the mask the reference is the tiny norm,
    the three take all the credit in round 1 and the QV loss does not move."""
    lr, tiny = 0.3, (0, 4, 7)
    clients = [QVObjective(toy, region(k, 200)) for k in range(10)]
    qv = QVObjective(toy, mixed_qv())
    agent = GAAAgent(QVObjective(toy, mixed_qv()), policy_lr=0.0)
    theta = toy_theta()
    start = float(qv.value_and_grad(theta)[0])
    for r in range(10):
        updates = torch.stack([-lr * c.value_and_grad(theta)[1] for c in clients])
        honest_mean = updates[[i for i in range(10) if i not in tiny]].mean(dim=0)
        step = -torch.sign(honest_mean) if direction == "uphill" else honest_mean
        g = torch.Generator().manual_seed(r)
        for i in tiny:
            z = torch.randn(step.shape, generator=g)
            row = step / step.norm() + z / z.norm()
            updates[i] = 1e-6 * honest_mean.norm() * row / row.norm()
        theta = theta + agent.step(theta, updates, list(range(10))).aggregate
        credits = agent.credits()
        honest = [credits[i] for i in range(10) if i not in tiny]
        assert min(honest) >= 0.05, credits
    assert float(qv.value_and_grad(theta)[0]) <= start - 0.01


# ------------------------------------------------------------------ the gates
def _healthcare_style_federation(n: int, features: int):
    """Healthcare-style (10 classes, regional label priors and shifts), F = 64."""
    spec = dataclasses.replace(HEALTHCARE_STYLE, num_features=features)
    data = [generate_region(spec, 0, k, 200) for k in range(n)]
    pooled = torch.cat([x for x, _ in data])
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    qx, qy = generate_qv_pool(spec, 0)
    qv = ((qx[:10] - mu) / sd, qy[:10])  # 10 samples of a region no client has
    return [((x - mu) / sd, y) for x, y in data], qv


def test_honest_clients_of_different_regions_keep_their_credit():
    """15 honest Healthcare-style clients, five local SGD steps each, a 10-sample
    QV set from another region. Their updates differ (cosines well below 1) and
    the QV set likes some regions better; none of that is evidence of an attack.
    Only a shortfall beyond the slack costs credit, and previous credits within the
    slack count alike in the consensus reference, so the credit stays spread: at
    least 12 effective nodes of 15 and every node ≥ 0.4 / n, every round. Without
    either gate the credit collapses onto one or two honest nodes within 5 rounds
    (the QV set's favourites), and the federation's own loss is worse (mean
    client loss after 10 rounds, measured: 1.46 with both gates, 1.75 without the
    reference's, 1.80 without the evidence's)."""
    n, features, steps = 15, 64, 5
    data, qv = _healthcare_style_federation(n, features)

    def model() -> nn.Module:
        return build_model("mlp-healthcare", features, 10)

    clients = [QVObjective(model, d) for d in data]
    agent = GAAAgent(QVObjective(model, qv))
    theta = torch.cat(
        [
            v.reshape(-1)
            for v in build_model("mlp-healthcare", features, 10, 0)
            .state_dict()
            .values()
        ]
    )
    g = torch.Generator().manual_seed(0)
    effective, lowest = [], []
    for _ in range(10):
        updates = []
        for c in clients:  # five local SGD steps on mini-batches of 32
            w = theta.clone()
            for _ in range(steps):
                idx = torch.randint(0, c.x.shape[0], (32,), generator=g)
                w = w - 0.5 * _grad(c, w, idx)
            updates.append(w - theta)
        res = agent.step(theta, torch.stack(updates), list(range(n)))
        theta = theta + res.aggregate
        credit = torch.tensor([agent.credits()[i] for i in range(n)])
        effective.append(float(1.0 / credit.square().sum()))
        lowest.append(float(credit.min()) * n)
    assert min(effective) >= 12.0, effective
    assert min(lowest) >= 0.4, lowest


def _grad(objective: QVObjective, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    w = w.detach().requires_grad_(True)
    out = torch.func.functional_call(
        objective.model, objective.unflatten(w), (objective.x[idx],)
    )
    loss = nn.functional.cross_entropy(out, objective.y[idx])
    return torch.autograd.grad(loss, w)[0]


# ------------------------------------------------------------------ learning
def _noisy_minority_run(policy_lr: float, rounds: int = 20):
    """3 of 10 send their honest update plus Gaussian noise of 4× its norm: an
    honest-looking norm (below the 5× slack) whose direction costs less than the
    slack in consensus, so the prior leaves them some credit. The QV set comes
    from a region no client has. The default agent: Adam, the evidence prior."""
    clients = [QVObjective(toy, region(k, 200)) for k in range(10)]
    agent = GAAAgent(QVObjective(toy, region(100, 10)), policy_lr=policy_lr)
    assert isinstance(agent.optimizer, torch.optim.Adam)
    prior = copy.deepcopy(agent.policy.state_dict())
    replay_gains: list[float] = []
    learn = agent._update_policy

    def learn_and_replay() -> None:
        """The window's loss under ψ before and after its own update."""
        window, start = list(agent.buffer), dict(agent.episode_start)
        with torch.no_grad():
            before = float(agent.episode_loss())
        learn()
        agent.buffer, agent.episode_start = window, start
        with torch.no_grad():
            replay_gains.append(before - float(agent.episode_loss()))
        agent.buffer = []

    agent._update_policy = learn_and_replay
    theta = toy_theta()
    g = torch.Generator().manual_seed(1)
    rewards = []
    for _ in range(rounds):
        updates = torch.stack([-c.value_and_grad(theta)[1] for c in clients])
        for b in (1, 4, 7):
            z = torch.randn(updates.shape[1], generator=g)
            updates[b] += 4.0 * updates[b].norm() * z / z.norm()
        res = agent.step(theta, updates, list(range(10)))
        rewards.append(res.reward)
        theta = theta + res.aggregate
    moved = max(
        float((agent.policy.state_dict()[k] - prior[k]).abs().max()) for k in prior
    )
    return sum(rewards), res.qv_loss_after, replay_gains, moved


def test_learning_with_adam_and_the_evidence_prior_lowers_the_qv_loss():
    """ψ learns from the episode loss with the default optimiser (Adam) starting
    from the evidence prior: it moves, every window's update lowers that
    window's loss (replayed under the ψ before and after), and over 4 windows the
    QV loss falls further than with the same prior frozen (measured: total
    reward 0.170 vs 0.161, final QV loss 0.521 vs 0.530)."""
    frozen_reward, frozen_loss, frozen_gains, frozen_moved = _noisy_minority_run(0.0)
    reward, loss, gains, moved = _noisy_minority_run(0.1)
    assert frozen_moved == 0.0 and frozen_gains == [0.0] * 4
    assert moved >= 0.1, moved
    assert len(gains) == 4 and min(gains) > 0.0, gains
    assert reward >= frozen_reward + 0.005, (reward, frozen_reward)
    assert loss <= frozen_loss - 0.005, (loss, frozen_loss)
