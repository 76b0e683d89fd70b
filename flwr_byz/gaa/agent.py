"""The GAA agent: credits, the per-round step, episode loss and policy updates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flwr_byz.validation import renamed_argument

from .buffers import weighted_coordinate_median
from .evidence_policy import EvidencePolicy
from .features import evidence_features
from .observation import Observation
from .paper_policy import PaperPolicy
from .qv import QVObjective
from .trusted import TrustedWorker

TRUSTED_NODE_ID = -1
POLICIES = ("evidence", "paper")
BACKPROP = ("exact", "truncated")
OPTIMIZERS = ("adam", "sgd")

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class GAAStep:
    """What one GAA round decided.

    Attributes
    ----------
    aggregate : torch.Tensor
        ``(d,)`` weighted update ``Σ α_i Δ_i`` (trusted row included; the
        weights are the credits, times each row's voice share among copies
        where the policy counts them, ``weights`` below);
        on float-buffer coordinates the credit-weighted median instead (see
        :meth:`GAAAgent.aggregate`).
    node_ids : tuple[int, ...]
        Node ids of the rows given to :meth:`GAAAgent.step`.
    weights : tuple[float, ...]
        Aggregation weight of each of those rows this round: its credit, times
        its voice share among copies where the policy counts them,
        renormalised (0 for removed rows).
    trusted_credit : float or None
        Aggregation weight of the server's trusted worker, if there is one.
    qv_loss_before, qv_loss_after : float
        ``f_B(θ_t)`` and ``f_B(θ_t + η·aggregate)``.
    reward : float
        ``qv_loss_before − qv_loss_after``.
    policy_updated : bool
        Whether ψ took a gradient step at the end of this round.
    removed : tuple[int, ...]
        Node ids left out of the aggregate: the policy could not score them
        (``paper`` policy out of slots).
    """

    aggregate: torch.Tensor
    node_ids: tuple[int, ...]
    weights: tuple[float, ...]
    trusted_credit: float | None
    qv_loss_before: float
    qv_loss_after: float
    reward: float
    policy_updated: bool
    removed: tuple[int, ...] = ()


def _prev_logits(
    ids: Sequence[int], logits: dict[int, torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Previous log-credits of ``ids``; a new id starts at the mean credit.

    "Mean credit" is the mean credit of the known nodes present this round,
    i.e. ``log(mean(exp(logit)))`` of theirs; all-new rounds start uniform.
    """
    known = [logits[i] for i in ids if i in logits]
    if known:
        k = torch.stack(known)
        start = torch.logsumexp(k, 0) - math.log(len(known))
    else:
        start = torch.zeros((), device=device)
    return torch.stack([logits.get(i, start) for i in ids])


class GAAAgent:
    """The gradient aggregation agent of Justinian's GAAvernor (no Flower dependency).

    Each round: credits ``α_t = h_ψ(s_t, α_{t−1})`` on the simplex over the
    present rows, aggregate ``Σ α_t,i Δ_i`` (with the policy's
    ``aggregate_log_voices``, if it has one, added to the credits' logits: copies
    share one weight), QV loss before and after the step
    ``θ_t + η·aggregate``, episode loss ``ℓ += γ^k (f_B(θ_{t+1}) − f_B(θ_t))``.
    Every ``window`` rounds (T, the paper's episode length) ψ takes one optimiser
    step on ℓ, back-propagated through α and θ over the whole window (``"exact"``:
    the window's inputs are kept, ``T·n·d`` floats, and replayed with autograd at
    its end) or
    through each round alone (``"truncated"``: previous credit and θ_t
    detached, the gradient accumulated round by round; ``n·d`` floats).
    Credits carry over episodes detached. Float buffers (BatchNorm running
    statistics) move by the credit-weighted median instead of the mean
    (:meth:`aggregate`).

    Credits are kept per node id as log-credits: nodes absent from a round are
    left out and the present ones renormalised; a node seen for the first time
    starts at the mean credit of the present known nodes.

    Parameters
    ----------
    objective : QVObjective
        ``f_B`` on the server's QV set.
    policy : {"evidence", "paper"} or torch.nn.Module
        The default :class:`EvidencePolicy`, the paper's :class:`PaperPolicy`,
        or a module with the same ``forward(obs, prev_logits)`` interface.
    gamma : float
        Discount γ within an episode.
    window : int
        T, the rounds of one learning window (the paper's episode length): ψ
        learns once every T rounds (paper: 5).
    policy_lr : float
        Learning rate of ψ's optimiser.
    optimizer : {"adam", "sgd"} or callable
        Optimiser of ψ, or a factory ``params -> torch.optim.Optimizer``.
    backprop : {"exact", "truncated"}
        Gradient through the whole episode or through each round only.
    server_learning_rate : float
        η, the server learning rate the strategy applies to the aggregate
        (the strategy's own ``server_learning_rate``).
    trusted : TrustedWorker or None
        Optional server-side honest worker, an extra row with id
        ``TRUSTED_NODE_ID`` (−1) and its own credit.
    max_paper_policy_params : int
        Refusal limit for ``policy="paper"``.
    log_credit_gap : float
        No log-credit falls more than this below the largest one in a round
        (keeps logits finite; trust comes back through the policy's decay).
    seed : int
        Seeds the paper policy's initialisation and the trusted worker's batches.
    policy_options : mapping or None
        Keyword arguments of :class:`EvidencePolicy` (``policy="evidence"``
        only), e.g. ``{"reference_gain": 20.0}``.
    """

    def __init__(
        self,
        objective: QVObjective,
        policy: str | nn.Module = "evidence",
        *,
        gamma: float = 0.9,
        window: int = 5,
        policy_lr: float = 0.01,
        optimizer: str | OptimizerFactory = "adam",
        backprop: str = "exact",
        server_learning_rate: float = 1.0,
        trusted: TrustedWorker | None = None,
        max_paper_policy_params: int = 20_000_000,
        log_credit_gap: float = 1e4,
        seed: int = 0,
        policy_options: Mapping[str, float] | None = None,
        episode_length: int | None = None,
    ) -> None:
        window = renamed_argument("episode_length", episode_length, "window", window)
        if isinstance(policy, str) and policy not in POLICIES:
            raise ValueError(f"policy: got {policy!r}; allowed: {POLICIES}")
        if backprop not in BACKPROP:
            raise ValueError(f"backprop: got {backprop!r}; allowed: {BACKPROP}")
        if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer: got {optimizer!r}; allowed: {OPTIMIZERS} or a callable"
            )
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma: got {gamma}; allowed: 0 < gamma <= 1")
        if window < 1:
            raise ValueError(f"window: got {window}; allowed: an integer >= 1")
        if policy_lr < 0:
            raise ValueError(f"policy_lr: got {policy_lr}; allowed: >= 0")
        self.objective = objective
        self.device = objective.device
        if policy_options and policy != "evidence":
            raise ValueError(
                f"policy_options {sorted(policy_options)} apply to "
                "policy='evidence' only"
            )
        if policy == "evidence":
            self.policy: nn.Module = EvidencePolicy(seed=seed, **(policy_options or {}))
        elif policy == "paper":
            self.policy = PaperPolicy(max_paper_policy_params, seed)
        else:
            self.policy = policy
        self.policy.to(self.device)
        self.gamma, self.window, self.policy_lr = gamma, window, policy_lr
        self.optimizer_spec = optimizer
        self.backprop, self.server_learning_rate = backprop, server_learning_rate
        self.trusted = trusted
        self.log_credit_gap = log_credit_gap
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.logits: dict[int, torch.Tensor] = {}
        self.episode_start: dict[int, torch.Tensor] = {}
        self.buffer: list[dict[str, Any]] = []
        self.grad_acc: list[torch.Tensor] | None = None
        self.position = 0  # k, the round's position in the window of T rounds
        self.rounds = 0
        self.episode = 1  # Algorithm 1's outer loop (the model restarts each one)
        self.episode_rounds = 0
        self.last_gradient: dict[str, torch.Tensor] | None = None
        if isinstance(self.policy, nn.Module) and any(
            True for _ in self.policy.parameters()
        ):
            self._make_optimizer()

    # ------------------------------------------------------------------ credits
    def credits(self) -> dict[int, float]:
        """Credit of every node ever seen: softmax over all stored log-credits."""
        if not self.logits:
            return {}
        # The softmax's sum runs in order of value, never of node id: the credits
        # depend on the log-credits only, not on which ids a simulation drew (a
        # resumed run has other ids than the run it continues).
        ids = sorted(self.logits, key=lambda i: (float(self.logits[i]), i))
        c = torch.softmax(torch.stack([self.logits[i] for i in ids]).double(), 0)
        credit = {i: float(v) for i, v in zip(ids, c, strict=True)}
        return {i: credit[i] for i in sorted(credit)}

    def detect(self, k: int, margin: float = 0.0) -> list[int]:
        """GAA+ (Justinian's GAAvernor, Procedure 2): the k lowest-credit node ids.

        ``margin > 0`` leaves out the nodes whose log-credit is within ``margin``
        nats of the highest: nodes the evidence never set apart from the best
        are not named, so fewer than k may come back (``margin = 0``: the
        paper's k lowest). The trusted server worker is never reported; ties
        break by lowest id.
        """
        if k < 0 or not margin >= 0:
            raise ValueError(
                f"k={k}, margin={margin}: allowed values are k >= 0 and margin >= 0"
            )
        # Log-credits order nodes like credits but never underflow into ties.
        logit = {i: float(v) for i, v in self.logits.items() if i != TRUSTED_NODE_ID}
        lowest = sorted(logit, key=lambda i: (logit[i], i))[:k]
        if margin == 0 or not logit:
            return lowest
        best = max(logit.values())
        return [i for i in lowest if logit[i] < best - margin]

    # --------------------------------------------------------------- the round
    def step(
        self, theta: torch.Tensor, updates: torch.Tensor, node_ids: Sequence[int]
    ) -> GAAStep:
        """One GAA round on the valid updates of ``node_ids``.

        Parameters
        ----------
        theta : torch.Tensor
            ``(d,)`` global parameters θ_t the updates were computed from.
        updates : torch.Tensor
            ``(n, d)`` updates Δ_i, one row per entry of ``node_ids``.
        node_ids : Sequence[int]
            Node id of each row (distinct; ``TRUSTED_NODE_ID`` is reserved).
        """
        ids = [int(i) for i in node_ids]
        if len(set(ids)) != len(ids) or TRUSTED_NODE_ID in ids:
            raise ValueError(
                f"node_ids: must be distinct and not {TRUSTED_NODE_ID}, got {ids}"
            )
        theta = theta.detach().to(self.device, torch.float32)
        # A copy: the caller may reuse its buffer, and the episode keeps the rows.
        u_all = updates.detach().to(self.device, torch.float32, copy=True)
        if u_all.shape != (len(ids), self.objective.dim):
            raise ValueError(
                f"updates: expected shape ({len(ids)}, {self.objective.dim}), got "
                f"{tuple(u_all.shape)}"
            )
        rows_ids, rows_u = list(ids), u_all
        if self.trusted is not None:
            t_update = self.trusted.update(theta, self.generator).to(self.device)
            rows_ids.append(TRUSTED_NODE_ID)
            rows_u = torch.cat([u_all, t_update.unsqueeze(0)])
        keep = [True] * len(rows_ids)
        if isinstance(self.policy, PaperPolicy) and rows_ids:
            keep = self.policy.accept(rows_ids, self.objective.dim)
            if self.optimizer is None:  # the layer exists from its first use on
                self._make_optimizer()
        used = [i for i, k in enumerate(keep) if k]
        used_ids = tuple(rows_ids[i] for i in used)
        removed = tuple(rows_ids[i] for i, k in enumerate(keep) if not k)
        u = rows_u[used] if len(used) < len(rows_ids) else rows_u

        obs = self._observe(theta, u, used_ids)
        if self.position == 0:
            self.episode_start = dict(self.logits)
        if self.backprop == "truncated":
            new_logits, alpha, after_loss = self._truncated_round(obs)
        else:
            with torch.no_grad():
                new_logits, alpha = self._credit_step(obs, self.logits)
                after_loss = self.objective(
                    theta + self.server_learning_rate * self.aggregate(alpha, u)
                )
            self.buffer.append({"obs": obs})
        for nid, v in zip(used_ids, new_logits.detach(), strict=True):
            self.logits[nid] = v.clone()
        aggregate = self.aggregate(alpha.detach(), u)
        self.position += 1
        self.rounds += 1
        self.episode_rounds += 1
        updated = False
        if self.position == self.window:
            self._update_policy()
            updated = True
        w_row = dict(zip(used_ids, alpha.detach().tolist(), strict=True))
        before, after = float(obs.qv_loss), float(after_loss)
        return GAAStep(
            aggregate=aggregate,
            node_ids=tuple(ids),
            weights=tuple(float(w_row.get(i, 0.0)) for i in ids),
            trusted_credit=w_row.get(TRUSTED_NODE_ID),
            qv_loss_before=before,
            qv_loss_after=after,
            reward=before - after,
            policy_updated=updated,
            removed=removed,
        )

    def new_episode(self) -> bool:
        """Start an episode of Algorithm 1's outer loop: the model restarts from θ₀.

        ψ, its optimiser and the credits α carry over (the paper's
        ``α_old ← α_T``). A window cut short by the end of the previous
        training run still teaches ψ: its loss is complete for the rounds it
        has, and it must not be chained to the restarted model's rounds.
        Does nothing before the current episode has played a round, so calling
        it twice starts one episode. Returns whether a new episode started.
        """
        if self.episode_rounds == 0:
            return False
        if self.position > 0:
            self._update_policy()
        self.episode += 1
        self.episode_rounds = 0
        return True

    def aggregate(self, alpha: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        """The round's aggregate: ``Σ α_i Δ_i``, buffers by credit-weighted median.

        Parameters move by the credit-weighted mean (differentiable in α: the
        step the policy learns through). Float buffers (BatchNorm running
        statistics, :attr:`QVObjective.buffer_mask`) are statistics with no
        gradient; a weighted mean would let a node move them by credit ×
        value, however small its credit, so they take the per-coordinate
        median weighted by the same credits
        (:func:`~flwr_byz.gaa.buffers.weighted_coordinate_median`): it stays
        within the values of the nodes holding most of the credit.
        """
        mean = alpha @ updates
        mask = self.objective.buffer_mask
        if not self.objective.buffer_keys:
            return mean
        median = weighted_coordinate_median(updates[:, mask], alpha.detach())
        return mean.masked_scatter(mask, median.to(mean.dtype))

    def _observe(
        self, theta: torch.Tensor, u: torch.Tensor, ids: tuple[int, ...]
    ) -> Observation:
        needs = getattr(self.policy, "needs_features", True)
        if needs:
            f0, grad = self.objective.value_and_grad(theta)
            with torch.no_grad():
                solo = self.objective.steps(theta, u, self.server_learning_rate)
            feats = evidence_features(u, f0, grad, solo)
        else:
            with torch.no_grad():
                f0 = self.objective(theta)
            feats = None
        return Observation(ids, u, theta, f0.detach(), feats)

    def _credit_step(
        self, obs: Observation, logits: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New log-credits of the rows of ``obs`` and the round's aggregation
        weights (differentiable): the credits, times each row's voice share
        where the policy counts copies as one voice (``aggregate_log_voices``),
        renormalised."""
        prev = _prev_logits(obs.node_ids, logits, self.device)
        new = self.policy(obs, prev)
        # A floor relative to the best node (constant within the round) keeps
        # logits finite.
        new = torch.maximum(new, new.max().detach() - self.log_credit_gap)
        log_voices = getattr(self.policy, "aggregate_log_voices", None)
        weighted = new if log_voices is None else new + log_voices(obs)
        return new, torch.softmax(weighted, dim=0)

    def _truncated_round(
        self, obs: Observation
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        detached = {i: v.detach() for i, v in self.logits.items()}
        with torch.enable_grad():
            new, alpha = self._credit_step(obs, detached)
            after = self.objective(
                obs.theta
                + self.server_learning_rate * self.aggregate(alpha, obs.updates)
            )
            term = self.gamma**self.position * (after - obs.qv_loss)
            grads = torch.autograd.grad(term, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g
            for g, p in zip(grads, params, strict=True)
        ]
        if self.grad_acc is None:
            self.grad_acc = grads
        else:
            self.grad_acc = [a + g for a, g in zip(self.grad_acc, grads, strict=True)]
        return new.detach(), alpha.detach(), after.detach()

    # ------------------------------------------------------------- the episode
    def episode_loss(self) -> torch.Tensor:
        """ℓ of the buffered episode, replayed with autograd (``"exact"`` mode).

        θ̂_k has the value of the real θ_k (so server momentum, dropouts or a
        changed node set do not falsify it) and the gradient of the recursion
        θ_{k+1} = θ_k + η Σ α_k,i Δ_k,i from the episode start.
        """
        logits = {i: v.detach() for i, v in self.episode_start.items()}
        offset: torch.Tensor | None = None
        loss = torch.zeros((), device=self.device)
        for k, rec in enumerate(self.buffer):
            obs: Observation = rec["obs"]
            new, alpha = self._credit_step(obs, logits)
            for nid, v in zip(obs.node_ids, new, strict=True):
                logits[nid] = v
            theta_hat = (
                obs.theta
                if offset is None
                else (obs.theta + (offset - offset.detach()))
            )
            step = self.server_learning_rate * self.aggregate(alpha, obs.updates)
            before = obs.qv_loss if offset is None else self.objective(theta_hat)
            loss = loss + self.gamma**k * (self.objective(theta_hat + step) - before)
            offset = step if offset is None else offset + step
        return loss

    def _update_policy(self) -> None:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.backprop == "exact":
            with torch.enable_grad():
                loss = self.episode_loss()
                grads = (
                    torch.autograd.grad(loss, params, allow_unused=True)
                    if (loss.requires_grad)
                    else [None] * len(params)
                )
            grads = [
                torch.zeros_like(p) if g is None else g
                for g, p in zip(grads, params, strict=True)
            ]
        else:
            grads = self.grad_acc or [torch.zeros_like(p) for p in params]
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        self.last_gradient = {
            n: g.detach().clone() for n, g in zip(names, grads, strict=True)
        }
        if self.optimizer is not None and params:
            self.optimizer.zero_grad(set_to_none=True)
            for p, g in zip(params, grads, strict=True):
                # Client input can make a gradient non-finite; never let it into ψ.
                p.grad = torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)
            self.optimizer.step()
        self.buffer, self.grad_acc, self.position = [], None, 0
        if self.logits:  # a global shift: changes no credit, keeps logits small
            top = torch.stack(list(self.logits.values())).max()
            self.logits = {i: v - top for i, v in self.logits.items()}

    def _make_optimizer(self) -> None:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            return
        if callable(self.optimizer_spec):
            self.optimizer = self.optimizer_spec(params)
        elif self.optimizer_spec == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=self.policy_lr)
        else:
            self.optimizer = torch.optim.Adam(params, lr=self.policy_lr)

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: ψ, optimiser, credits, episode, RNG."""

        def obs_state(o: Observation) -> dict[str, Any]:
            return {
                "node_ids": list(o.node_ids),
                "updates": o.updates.cpu(),
                "theta": o.theta.cpu(),
                "qv_loss": o.qv_loss.cpu(),
                "features": None if o.features is None else o.features.cpu(),
            }

        return {
            "version": 1,
            "policy": {k: v.cpu() for k, v in self.policy.state_dict().items()},
            "policy_layout": self.policy.layout()
            if isinstance(self.policy, PaperPolicy)
            else None,
            "optimizer": None
            if self.optimizer is None
            else self.optimizer.state_dict(),
            "logits": {i: v.cpu() for i, v in self.logits.items()},
            "episode_start": {i: v.cpu() for i, v in self.episode_start.items()},
            "buffer": [obs_state(r["obs"]) for r in self.buffer],
            "grad_acc": None
            if self.grad_acc is None
            else [g.cpu() for g in self.grad_acc],
            "position": self.position,
            "rounds": self.rounds,
            "episode": self.episode,
            "episode_rounds": self.episode_rounds,
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (agent built with the same arguments)."""
        dev = self.device
        if state.get("policy_layout") is not None:
            if not isinstance(self.policy, PaperPolicy):
                raise ValueError(
                    "state: saved from policy='paper', loading into "
                    f"{type(self.policy).__name__}"
                )
            self.policy.restore_layout(state["policy_layout"])
            self.policy.to(dev)
            self._make_optimizer()
        self.policy.load_state_dict(state["policy"])
        if state["optimizer"] is not None:
            if self.optimizer is None:
                self._make_optimizer()
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state["optimizer"])
        self.logits = {int(i): v.to(dev) for i, v in state["logits"].items()}
        self.episode_start = {
            int(i): v.to(dev) for i, v in state["episode_start"].items()
        }
        self.buffer = [
            {
                "obs": Observation(
                    tuple(r["node_ids"]),
                    r["updates"].to(dev),
                    r["theta"].to(dev),
                    r["qv_loss"].to(dev),
                    None if r["features"] is None else r["features"].to(dev),
                )
            }
            for r in state["buffer"]
        ]
        self.grad_acc = (
            None
            if state["grad_acc"] is None
            else [g.to(dev) for g in state["grad_acc"]]
        )
        self.position = int(state["position"])
        self.rounds = int(state["rounds"])
        self.episode = int(state.get("episode", 1))
        self.episode_rounds = int(state.get("episode_rounds", self.rounds))
        self.generator.set_state(state["rng"])
