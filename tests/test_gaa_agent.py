"""The GAA agent (flwr_byz.gaa): gradients, credits, persistence, learning."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from flwr_byz.gaa import (
    TRUSTED_NODE_ID,
    EvidencePolicy,
    GAAAgent,
    Observation,
    PaperPolicy,
    QVObjective,
    TrustedWorker,
    evidence_features,
    qv_tensors,
)

F, C, H = 6, 3, 4


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(F, H), nn.Sigmoid(), nn.Linear(H, C))


def flat_init(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.cat([v.reshape(-1) for v in factory().state_dict().values()])


def qv(m: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, F, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def round_updates(r: int, n: int, d: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + r)
    return scale * torch.randn(n, d, generator=g)


# ---------------------------------------------------------------- reference
def reference_gradient(
    policy: nn.Module,
    objective: QVObjective,
    theta0: torch.Tensor,
    rounds: list[torch.Tensor],
    ids: list[int],
    gamma: float,
    exact: bool,
) -> dict[str, torch.Tensor]:
    """Unroll the episode by hand with autograd (same policy, fresh logits)."""
    params = dict(policy.named_parameters())
    logits = torch.zeros(len(ids))
    theta = theta0.clone()
    loss = torch.zeros(())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for k, u in enumerate(rounds):
        th_obs = theta.detach()
        f0, grad = objective.value_and_grad(th_obs)
        with torch.no_grad():
            solo = torch.stack([objective(th_obs + row) for row in u])
        feats = (
            evidence_features(u, f0, grad, solo)
            if getattr(policy, "needs_features", True)
            else None
        )
        obs = Observation(tuple(ids), u, th_obs, f0, feats)
        prev = logits.detach() if not exact else logits
        new = policy(obs, prev)
        new = torch.maximum(new, new.max().detach() - 1e4)
        alpha = torch.softmax(new, 0)
        th_in = theta if exact else theta.detach()
        nxt = th_in + alpha @ u
        term = gamma**k * (objective(nxt) - objective(th_in))
        if exact:
            loss = loss + term
        else:
            gs = torch.autograd.grad(term, list(params.values()), allow_unused=True)
            for key, g in zip(params, gs, strict=True):
                if g is not None:
                    total[key] += g
        logits, theta = new, nxt
    if exact:
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        total = {
            key: torch.zeros_like(params[key]) if g is None else g
            for key, g in zip(params, gs, strict=True)
        }
    return total


def run_episode(policy_name: str, backprop: str, window: int = 3, n: int = 4):
    objective = QVObjective(factory, qv())
    agent = GAAAgent(
        objective,
        policy_name,
        window=window,
        backprop=backprop,
        optimizer="sgd",
        policy_lr=0.0,
    )
    ids = [11, 22, 33, 44][:n]
    if policy_name == "paper":
        agent.policy.accept(ids, objective.dim)
    if policy_name == "evidence":  # make the residual MLP matter too
        torch.manual_seed(5)
        with torch.no_grad():
            agent.policy.residual[2].weight.normal_(0, 0.5)
    policy0 = copy.deepcopy(agent.policy)
    theta = flat_init()
    theta0 = theta.clone()
    rounds = [round_updates(r, n, objective.dim) for r in range(window)]
    for u in rounds:
        res = agent.step(theta, u, ids)
        theta = theta + res.aggregate
    assert res.policy_updated
    return agent, policy0, objective, theta0, rounds, ids


@pytest.mark.parametrize("policy_name", ["evidence", "paper"])
@pytest.mark.parametrize("backprop", ["exact", "truncated"])
def test_window_gradient_matches_hand_unrolled_reference(policy_name, backprop):
    agent, policy0, objective, theta0, rounds, ids = run_episode(policy_name, backprop)
    ref = reference_gradient(
        policy0, objective, theta0, rounds, ids, agent.gamma, exact=backprop == "exact"
    )
    got = agent.last_gradient
    assert got is not None and set(got) == set(ref)
    scale = max(1.0, max(float(g.abs().max()) for g in ref.values()))
    assert any(float(g.abs().max()) > 1e-6 for g in ref.values())
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5 * scale)


def test_exact_and_truncated_gradients_differ():
    """Exact BPTT sees the effect of early credits on later losses; truncated not."""
    a_exact = run_episode("evidence", "exact")[0].last_gradient
    a_trunc = run_episode("evidence", "truncated")[0].last_gradient
    diff = max(float((a_exact[k] - a_trunc[k]).abs().max()) for k in a_exact)
    assert diff > 1e-4


# ---------------------------------------------------------------- credits
@pytest.mark.parametrize("policy_name", ["evidence", "paper"])
def test_credits_lie_on_the_simplex(policy_name):
    objective = QVObjective(factory, qv())
    agent = GAAAgent(objective, policy_name, window=2)
    theta = flat_init()
    ids = [3, 1, 2, 9, 7]
    for r in range(5):
        u = round_updates(r, len(ids), objective.dim, scale=0.1 * (r + 1))
        u[0] *= 50.0  # one huge update
        res = agent.step(theta, u, ids)
        w = torch.tensor(res.weights)
        assert (w >= 0).all() and math.isclose(float(w.sum()), 1.0, rel_tol=1e-5)
        assert math.isclose(sum(agent.credits().values()), 1.0, rel_tol=1e-6)
        theta = theta + res.aggregate


def test_evidence_policy_is_permutation_equivariant():
    objective = QVObjective(factory, qv())
    policy = EvidencePolicy()
    torch.manual_seed(3)
    with torch.no_grad():
        policy.residual[2].weight.normal_(0, 0.5)
    theta = flat_init()
    u = round_updates(0, 6, objective.dim)
    u[4] = 0.5  # a random-fault-like row
    prev = torch.randn(6)
    f0, g = objective.value_and_grad(theta)

    def credits(perm):
        up = u[perm]
        solo = objective.batch(theta + up)
        obs = Observation(
            tuple(perm.tolist()), up, theta, f0, evidence_features(up, f0, g, solo)
        )
        return torch.softmax(policy(obs, prev[perm]), 0)

    base = credits(torch.arange(6))
    for seed in range(4):
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(credits(perm), base[perm], rtol=1e-5, atol=1e-7)
    n_params = sum(p.numel() for p in policy.parameters())
    assert n_params == sum(p.numel() for p in EvidencePolicy().parameters())


def test_absent_nodes_are_left_out_and_new_nodes_start_at_the_mean_credit():
    objective = QVObjective(factory, qv())
    agent = GAAAgent(objective, window=100)
    theta = flat_init()
    ids = [10, 20, 30, 40]
    u = round_updates(0, 4, objective.dim)
    u[3] = 5.0  # node 40 is a random fault
    agent.step(theta, u, ids)
    before = dict(agent.logits)
    # Round 2: node 20 drops out, node 50 is new.
    res = agent.step(theta, round_updates(1, 4, objective.dim), [10, 30, 40, 50])
    assert 20 not in res.node_ids and math.isclose(sum(res.weights), 1.0, rel_tol=1e-6)
    assert torch.equal(agent.logits[20], before[20])  # untouched while absent
    # The new node's prior is the mean credit of the known present nodes.
    known = torch.stack([before[i] for i in (10, 30, 40)])
    expected = torch.logsumexp(known, 0) - math.log(3)
    from flwr_byz.gaa.agent import _prev_logits

    got = _prev_logits([10, 30, 40, 50], before, torch.device("cpu"))[-1]
    torch.testing.assert_close(got, expected)
    # Node 20 returns and is scored from its stored credit.
    res = agent.step(theta, round_updates(2, 2, objective.dim), [20, 10])
    assert len(res.weights) == 2 and math.isclose(sum(res.weights), 1.0, rel_tol=1e-6)
    assert agent.detect(1) == [40]


def test_detect_returns_lowest_credits_ties_by_lowest_id():
    objective = QVObjective(factory, qv())
    agent = GAAAgent(objective)
    agent.logits = {
        5: torch.tensor(0.0),
        3: torch.tensor(-2.0),
        4: torch.tensor(-2.0),
        TRUSTED_NODE_ID: torch.tensor(-9.0),
    }
    assert agent.detect(2) == [3, 4]
    assert agent.detect(10) == [3, 4, 5]
    with pytest.raises(ValueError, match="k"):
        agent.detect(-1)


def test_detect_with_a_margin_names_only_nodes_set_apart_from_the_best():
    agent = GAAAgent(QVObjective(factory, qv()))
    agent.logits = {
        1: torch.tensor(0.0),
        2: torch.tensor(-4.9),
        3: torch.tensor(-5.1),
        4: torch.tensor(-40.0),
    }
    assert agent.detect(3) == [4, 3, 2]
    assert agent.detect(3, margin=5.0) == [4, 3]
    assert agent.detect(1, margin=5.0) == [4]
    assert agent.detect(3, margin=50.0) == []
    with pytest.raises(ValueError, match="margin"):
        agent.detect(1, margin=-1.0)


# ---------------------------------------------------------------- config
def test_configuration_errors_name_the_argument():
    objective = QVObjective(factory, qv())
    for kwargs, key in [
        ({"policy": "greedy"}, "policy"),
        ({"backprop": "full"}, "backprop"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"window": 0}, "window"),
        ({"gamma": 1.5}, "gamma"),
    ]:
        with pytest.raises(ValueError, match=key):
            GAAAgent(objective, **kwargs)


def test_paper_policy_refuses_past_its_parameter_limit():
    objective = QVObjective(factory, qv())
    agent = GAAAgent(objective, "paper", max_paper_policy_params=500)
    with pytest.raises(ValueError, match="max_paper_policy_params"):
        agent.step(flat_init(), round_updates(0, 4, objective.dim), [1, 2, 3, 4])
    assert PaperPolicy.param_count(4, objective.dim) > 500


def test_paper_policy_fixed_slots_refuse_extra_nodes():
    objective = QVObjective(factory, qv())
    agent = GAAAgent(objective, "paper")
    theta = flat_init()
    agent.step(theta, round_updates(0, 3, objective.dim), [1, 2, 3])
    res = agent.step(theta, round_updates(1, 3, objective.dim), [1, 3, 4])
    assert res.removed == (4,) and res.weights[2] == 0.0
    assert math.isclose(sum(res.weights), 1.0, rel_tol=1e-6)


def test_qv_set_forms_and_one_sample():
    x, y = qv(5)
    ds = torch.utils.data.TensorDataset(x, y)
    for form in [(x, y), ds, torch.utils.data.DataLoader(ds, batch_size=2)]:
        xx, yy = qv_tensors(form)
        assert torch.equal(xx, x) and torch.equal(yy, y)
    with pytest.raises(ValueError, match="qv_set"):
        qv_tensors([1, 2, 3])
    with pytest.raises(ValueError, match="qv_set"):
        qv_tensors((x[:0], y[:0]))
    # A QV set of one sample is enough to run and to learn.
    objective = QVObjective(factory, (x[:1], y[:1]))
    agent = GAAAgent(objective, window=2)
    theta = flat_init()
    for r in range(4):
        res = agent.step(theta, round_updates(r, 3, objective.dim), [1, 2, 3])
        assert math.isfinite(res.reward)
        theta = theta + res.aggregate
    assert agent.last_gradient is not None


# ---------------------------------------------------------------- persistence
def _drive(agent: GAAAgent, theta, rounds, ids_of):
    out = []
    for r, u in rounds:
        res = agent.step(theta, u, ids_of(r))
        out.append((res.weights, agent.credits()))
        theta = theta + res.aggregate
    return out, theta


@pytest.mark.parametrize(
    "policy_name,backprop",
    [("evidence", "exact"), ("evidence", "truncated"), ("paper", "exact")],
)
def test_save_load_continue_equals_uninterrupted(policy_name, backprop):
    objective = QVObjective(factory, qv())
    x, y = qv(20, seed=7)
    trusted = TrustedWorker(factory, (x, y), lr=0.5, batch_size=4)

    def ids_of(r: int) -> list[int]:
        return [1, 2, 3, 4] if r % 3 else [1, 3, 4]  # node 2 drops out

    def make():
        return GAAAgent(
            objective,
            policy_name,
            window=3,
            backprop=backprop,
            trusted=trusted,
            seed=4,
            policy_lr=0.05,
        )

    rounds = [(r, round_updates(r, len(ids_of(r)), objective.dim)) for r in range(8)]
    full, _ = _drive(make(), flat_init(), rounds, ids_of)
    first = make()
    part1, theta = _drive(first, flat_init(), rounds[:4], ids_of)  # mid-episode
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    part2, _ = _drive(resumed, theta, rounds[4:], ids_of)
    assert part1 + part2 == full


# ---------------------------------------------------------------- learning
_TOY_IN, _TOY_HIDDEN = 32, 10
_TOY_W = torch.randn(_TOY_IN, 2, generator=torch.Generator().manual_seed(7))


def big() -> nn.Module:
    """The toy task's model: 32 features, 10 sigmoid units, 2 classes."""
    return nn.Sequential(
        nn.Linear(_TOY_IN, _TOY_HIDDEN), nn.Sigmoid(), nn.Linear(_TOY_HIDDEN, 2)
    )


def region(k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` samples of region ``k``: its own covariate shift, one shared labelling."""
    g = torch.Generator().manual_seed(1000 + k)
    shift = 0.5 * torch.randn(_TOY_IN, generator=g)
    x = torch.randn(m, _TOY_IN, generator=g) + shift
    return x, ((x - shift) @ _TOY_W + 0.8 * torch.randn(m, 2, generator=g)).argmax(1)


def test_credit_leaves_random_fault_majority_within_two_rounds():
    """7 of 10 random-fault updates (Δ = −λ·N(0.5·1, (2e-6)²)), in-process."""
    lr = 1.0

    clients = [QVObjective(big, region(k, 200)) for k in range(3)]
    objective = QVObjective(big, region(100, 10))
    agent = GAAAgent(objective)
    torch.manual_seed(0)
    theta = torch.cat([v.reshape(-1) for v in big().state_dict().values()])
    g = torch.Generator().manual_seed(0)
    ids = list(range(10))
    for r in range(6):
        honest = [-lr * c.value_and_grad(theta)[1] for c in clients]
        faults = [
            -lr * (0.5 + 2e-6 * torch.randn(objective.dim, generator=g))
            for _ in range(7)
        ]
        res = agent.step(theta, torch.stack(honest + faults), ids)
        theta = theta + res.aggregate
        assert sum(res.weights[:3]) >= 0.99, (r, res.weights)
    assert sorted(agent.detect(7)) == list(range(3, 10))


def mixed_qv() -> tuple[torch.Tensor, torch.Tensor]:
    """The GAA paper's QV set: one fresh sample of each client region 0..9."""
    samples = [tuple(t[200:] for t in region(k, 201)) for k in range(10)]
    return torch.cat([x for x, _ in samples]), torch.cat([y for _, y in samples])


@pytest.mark.parametrize(
    ("qv_set", "reference_gain"),
    [
        # A representative QV set: the QV lean of the consensus is on (default).
        (mixed_qv, EvidencePolicy().reference_gain),
        # A QV set from a region no client has: the honest consensus itself goes
        # uphill on it in round 1, so the lean would side with the flippers for a
        # round; without the lean the consensus alone removes a minority.
        (lambda: region(100, 10), 0.0),
    ],
    ids=["representative-qv", "foreign-qv-no-lean"],
)
def test_sign_flip_minority_loses_credit(qv_set, reference_gain):
    """3 of 10 send −Δ of their own honest update (same norm as honest), in-process."""
    lr = 1.0

    clients = [QVObjective(big, region(k, 200)) for k in range(10)]
    objective = QVObjective(big, qv_set())
    agent = GAAAgent(objective, EvidencePolicy(reference_gain=reference_gain))
    torch.manual_seed(0)
    theta = torch.cat([v.reshape(-1) for v in big().state_dict().values()])
    byzantine = [2, 5, 9]
    ids = list(range(10))
    trace = []
    for _ in range(12):
        updates = torch.stack([-lr * c.value_and_grad(theta)[1] for c in clients])
        updates[byzantine] *= -1
        res = agent.step(theta, updates, ids)
        theta = theta + res.aggregate
        credits = agent.credits()
        trace.append(sum(v for i, v in credits.items() if i not in byzantine))
    assert trace[-1] >= 0.9, trace
    assert min(trace[3:]) >= 0.9, trace
    assert sorted(agent.detect(3)) == byzantine


def test_a_sign_flip_majority_loses_credit_when_every_alignment_is_weak():
    """Healthcare-style: the updates share a large component the QV set cannot
    see (orthogonal to ∇f_B), so each one's cosine with −∇f_B is ≈ ±0.1, and 7
    of 10 send −Δ. The QV lean reads the alignments relative to each other: the
    honest minority still makes the reference and keeps the credit."""
    lr = 1.0
    clients = [QVObjective(big, region(k, 200)) for k in range(10)]
    objective = QVObjective(big, mixed_qv())
    agent = GAAAgent(objective)
    torch.manual_seed(0)
    theta = torch.cat([v.reshape(-1) for v in big().state_dict().values()])
    g = torch.Generator().manual_seed(3)
    byzantine = [2, 3, 5, 6, 7, 8, 9]
    trace, alignment = [], []
    for _ in range(10):
        grads = torch.stack([-lr * c.value_and_grad(theta)[1] for c in clients])
        qv_grad = objective.value_and_grad(theta)[1]
        shared = torch.randn(objective.dim, generator=g)
        shared -= (shared @ qv_grad) / (qv_grad @ qv_grad) * qv_grad
        updates = grads + 6 * grads.norm(dim=1).mean() * shared / shared.norm()
        updates[byzantine] *= -1
        alignment.append(
            torch.nn.functional.cosine_similarity(updates, -qv_grad[None]).abs()
        )
        theta = theta + agent.step(theta, updates, list(range(10))).aggregate
        credits = agent.credits()
        trace.append(sum(v for i, v in credits.items() if i not in byzantine))
    assert float(torch.cat(alignment).median()) < 0.2, alignment
    assert min(trace[2:]) >= 0.9, trace
    assert sorted(agent.detect(7)) == byzantine


def test_a_scaling_majority_is_found_by_its_norm_not_mixed_with_honest_regions():
    """7 of 10 send 10× their own honest update: honest directions, and a step the
    QV set may even like. Honest regions differ in norm by up to ≈ 3×; the
    attackers sit 10× above the trusted norm, past ``NORM_SLACK`` (5×), and rank
    below every honest region (at 10× slack, one honest region ranked below one
    attacker here)."""
    lr = 1.0
    clients = [QVObjective(big, region(k, 200)) for k in range(10)]
    agent = GAAAgent(QVObjective(big, region(100, 10)))
    torch.manual_seed(0)
    theta = torch.cat([v.reshape(-1) for v in big().state_dict().values()])
    byzantine = [3, 4, 5, 6, 7, 8, 9]
    for _ in range(12):
        updates = torch.stack([-lr * c.value_and_grad(theta)[1] for c in clients])
        updates[byzantine] *= 10.0
        theta = theta + agent.step(theta, updates, list(range(10))).aggregate
    assert sorted(agent.detect(7)) == byzantine, agent.credits()


def _sign_flip_majority_run(policy_lr: float, rounds: int = 20):
    """7 of 10 send −Δ of their own honest update; the policy starts neutral.

    Every read-out of the prior is zero (no norm, QV or consensus evidence), so
    before learning every worker has the same credit and the model follows the
    flipped majority. Only the episode loss on the QV set can tell the groups apart.
    """
    lr = 1.0

    clients = [QVObjective(big, region(k, 200)) for k in range(10)]
    held_out = QVObjective(big, region(55, 2000))
    neutral = EvidencePolicy(
        gain_weight=0.0, descent_weight=0.0, norm_weight=0.0, consensus_weight=0.0
    )
    agent = GAAAgent(
        QVObjective(big, region(100, 10)), neutral, optimizer="sgd", policy_lr=policy_lr
    )
    torch.manual_seed(0)
    theta = torch.cat([v.reshape(-1) for v in big().state_dict().values()])
    byzantine = [2, 3, 5, 6, 7, 8, 9]
    trace = []
    for _ in range(rounds):
        updates = torch.stack([-lr * c.value_and_grad(theta)[1] for c in clients])
        updates[byzantine] *= -1
        theta = theta + agent.step(theta, updates, list(range(10))).aggregate
        credits = agent.credits()
        trace.append(sum(v for i, v in credits.items() if i not in byzantine))
    return trace, float(held_out(theta)), agent


def test_learning_the_policy_beats_a_sign_flip_majority_the_prior_cannot():
    """Learning ψ is what moves the credit: without the optimiser step the credit
    stays uniform (0.3 honest) and the model follows the 7 flippers; with it the
    3 honest workers hold all the credit within 4 episodes of 5 rounds."""
    fixed, fixed_loss, _ = _sign_flip_majority_run(policy_lr=0.0)
    learnt, learnt_loss, agent = _sign_flip_majority_run(policy_lr=0.1)
    assert max(fixed) <= 0.35, fixed
    assert learnt[-1] >= 0.95, learnt
    assert learnt_loss < fixed_loss / 10, (learnt_loss, fixed_loss)
    assert sorted(agent.detect(7)) == [2, 3, 5, 6, 7, 8, 9]


def test_descent_feature_reads_plus_one_for_a_descent_step():
    objective = QVObjective(factory, qv())
    theta = flat_init()
    f0, grad = objective.value_and_grad(theta)
    steps = torch.stack([-0.1 * grad, 0.1 * grad, torch.zeros_like(grad) + 1e-3])
    with torch.no_grad():
        solo = torch.stack([objective(theta + row) for row in steps])
    feats = evidence_features(steps, f0, grad, solo)
    descent = feats[:, 1]
    assert descent[0] == pytest.approx(1.0, abs=1e-5)
    assert descent[1] == pytest.approx(-1.0, abs=1e-5)
    # The solo gain agrees: the descent step lowers the QV loss, its negation raises it.
    assert feats[0, 0] > feats[1, 0]


def test_trusted_worker_update_lowers_its_own_loss():
    x, y = qv(32, seed=3)
    worker = TrustedWorker(factory, (x, y), lr=0.5, steps=3)
    theta = flat_init()
    delta = worker.update(theta, torch.Generator().manual_seed(0))
    objective = QVObjective(factory, (x, y))
    assert float(objective(theta + delta)) < float(objective(theta)) - 1e-3


def test_the_old_step_result_name_warns_and_is_gaa_step() -> None:
    import flwr_byz.gaa as gaa

    with pytest.warns(DeprecationWarning, match="use flwr_byz.gaa.GAAStep"):
        assert gaa.StepResult is gaa.GAAStep
