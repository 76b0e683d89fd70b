"""GAA: the gradient aggregation agent of Justinian's GAAvernor (Pan et al.)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import nn

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.gaa import (
    TRUSTED_NODE_ID,
    GAAAgent,
    GAAStep,
    PaperPolicy,
    QVObjective,
    TrustedWorker,
)
from flwr_byz.gaa.qv import LossFn, check_model_factory
from flwr_byz.validation import renamed_argument

from .layer_state import NodeIdMap, map_node_id
from .robust_strategy import RobustStrategy
from .server_model import check_model_keys


class GAA(RobustStrategy):
    """GAA [Pan et al., 2020] strategy: credits learnt against a server-held QV set.

    Each round the agent (:class:`flwr_byz.gaa.GAAAgent`) puts a credit
    ``α_t,i`` on the simplex over the valid replies, the model moves by
    ``η Σ α_t,i Δ_i`` (with the default policy, copies of one update share one
    credit's weight: ``α̃_i ∝ α_i · v_i``, see
    :class:`~flwr_byz.gaa.evidence_policy.EvidencePolicy`), and the reward is
    the decrease of the loss on the quasi-validation (QV) set B. Every
    ``window`` rounds the policy takes one gradient step on the window's
    discounted loss. No Byzantine budget ``f`` is
    needed: GAA tolerates any share of attackers as long as the QV set is
    informative (Justinian's GAAvernor, Assumptions 2 and 4).

    Calling :meth:`start` again (its round numbers restart at 1) runs another
    episode of the paper's outer loop (Algorithm 1): the model starts again from
    the ``initial_arrays`` given, while ψ, its optimiser and the credits carry
    over, so the policy keeps learning across trainings.

    Buffers (a model with BatchNorm, e.g. ResNet-18): only parameters move by
    the credit-weighted mean ``Σ α_t,i Δ_i``, the step the policy learns
    through. Float buffers (running mean and variance) have no gradient, and a
    weighted mean would let any node shift them by credit × value however
    small its credit (one huge ``running_var`` would do), so they move by the
    per-coordinate median of the replies' buffer updates weighted by the same
    credits: the new statistics lie within the values of the nodes that hold
    most of the credit (:meth:`flwr_byz.gaa.GAAAgent.aggregate`). Integer
    buffers (``num_batches_tracked``) are not aggregated: the model keeps the
    sent value and dtype, as with every rule. The QV loss ``f_B`` evaluates
    the model in ``eval`` mode, so BatchNorm normalises with the model's
    running statistics — not with those of the few QV samples — and each
    reply's own statistics count in its solo QV loss. A trusted worker trains
    BatchNorm in ``train`` mode like a client, so its update carries running
    statistics too.

    Every round's MetricRecord carries, besides the common diagnostics
    (``weights`` = this round's credits of the valid replies):
    ``credit-node-ids`` / ``credits`` (every node seen so far, softmax over all
    stored log-credits: the GAA+ trace), ``qv-loss-before``, ``qv-loss-after``,
    ``reward``, ``policy-updated`` (0/1), ``episode``, and ``trusted-credit``
    when a trusted server worker is used.

    Parameters
    ----------
    model_factory : Callable[[], torch.nn.Module]
        Builds a fresh model: a ``torch.nn.Module`` class or a zero-argument
        function (``Net`` or ``lambda: Net()``, never the instance ``Net()``,
        refused with a ValueError); its ``state_dict`` must match the
        ArrayRecord (same keys in the same order).
    qv_set : tuple[Tensor, Tensor] | Mapping | Dataset | DataLoader | LabeledData
        The QV set B, any size >= 1 (the paper uses < 10 samples): ``(x, y)``
        tensors; a torch ``Dataset``, ``Subset`` or Hugging Face ``Dataset`` of
        ``(x, y)`` or dict samples; a ``DataLoader`` of ``(x, y)`` or dict
        batches (Flower's quickstarts: ``{"img": x, "label": y}``); see
        :func:`flwr_byz.gaa.qv.qv_tensors`.
    loss : Callable[[logits, targets], Tensor] or None
        Mean loss on B; cross-entropy when ``None``.
    gamma : float
        Discount γ within a window (paper: 0.9).
    window : int
        T, the rounds of one learning window (the paper's episode length): ψ
        learns once per window (paper: 5). ``episode_length``, its former name,
        still works for one release, with a DeprecationWarning.
    policy : {"evidence", "paper"}
        ``"evidence"`` (default): permutation-equivariant additive log-credit
        recurrence with a parameter count independent of n and d.
        ``"paper"``: Justinian's GAAvernor, §5.1.4, one linear layer + softmax over the
        concatenated state (n·d + d + 1 + n inputs).
    policy_lr : float
        Learning rate of the policy optimiser.
    optimizer : {"adam", "sgd"} or callable
        Policy optimiser, or a factory ``params -> torch.optim.Optimizer``.
    backprop : {"exact", "truncated"}
        Back-propagation through the whole episode (memory T·n·d) or
        through each round only (memory n·d).
    trusted_data : same types as ``qv_set``, or None
        Data of an optional trusted server-side worker (Justinian's GAAvernor, §7): the
        server adds its own honest update as an extra row with its own credit.
    trusted_lr, trusted_steps, trusted_batch_size : float, int, int or None
        Local SGD of the trusted worker; match the clients' training.
    max_paper_policy_params : int
        ``policy="paper"`` refuses (ValueError) when it would need more
        parameters than this.
    seed : int
        Seed of the agent (paper-policy initialisation, trusted batches).
    policy_options : mapping or None
        Keyword arguments of :class:`~flwr_byz.gaa.EvidencePolicy`
        (``policy="evidence"`` only).
    qv_keys : tuple or None
        ``(input_key, label_key)`` of the dict samples or batches of ``qv_set``
        and ``trusted_data``, e.g. ``("img", "fine_label")``. ``None``: the
        keys among the common names (``x``, ``img``, ``image``,
        ``pixel_values``, ... and ``y``, ``label``, ``labels``, ``target``,
        ...); a dict whose keys leave a doubt is refused, naming its keys.
    **kwargs : Any
        Every argument of :class:`RobustStrategy` (``fraction_train``,
        ``min_train_nodes``, ``server_learning_rate``, ``device``, ...).
        ``num_malicious_nodes`` / ``malicious_fraction`` are accepted and
        ignored; ``weighted_aggregation`` is not supported.

    Examples
    --------
    >>> strategy = GAA(model_factory=lambda: build_model("mlp-yelp", 1024, 2),
    ...                qv_set=(x_qv, y_qv))
    >>> result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=20)
    >>> strategy.detect(3)   # GAA+: the 3 node ids with the lowest credit
    """

    #: GAA is no rule of the registry: its flags are its own.
    rule_name = "gaa"
    supports_weights = False
    uses_f = False

    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        qv_set: Any,
        loss: LossFn | None = None,
        gamma: float = 0.9,
        window: int = 5,
        policy: str = "evidence",
        policy_lr: float = 0.01,
        optimizer: str | Callable[[list[nn.Parameter]], torch.optim.Optimizer] = "adam",
        backprop: str = "exact",
        trusted_data: Any = None,
        trusted_lr: float = 0.1,
        trusted_steps: int = 1,
        trusted_batch_size: int | None = None,
        max_paper_policy_params: int = 20_000_000,
        seed: int = 0,
        policy_options: Mapping[str, float] | None = None,
        qv_keys: tuple[str | int, str | int] | None = None,
        episode_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        window = renamed_argument("episode_length", episode_length, "window", window)
        super().__init__(**kwargs)
        if self.server_momentum != 0.0:
            # The agent learns through θ_{t+1} = θ_t + η Σ α_i Δ_i, the step it
            # scores on the QV set; a momentum buffer would apply another one.
            raise ValueError(
                f"server_momentum={self.server_momentum!r}: GAA learns through the "
                "plain step θ + η·Σ α_i Δ_i; allowed value: 0.0"
            )
        check_model_factory(model_factory)
        objective = QVObjective(model_factory, qv_set, loss, self.torch_device, qv_keys)
        trusted = None
        if trusted_data is not None:
            trusted = TrustedWorker(
                model_factory,
                trusted_data,
                trusted_lr,
                trusted_steps,
                trusted_batch_size,
                loss,
                self.torch_device,
                qv_keys,
            )
        if policy == "paper":
            n_min = max(1, self.min_train_nodes) + (trusted is not None)
            count = PaperPolicy.param_count(n_min, objective.dim)
            if count > max_paper_policy_params:
                raise ValueError(
                    f"policy='paper' needs at least {count:,} parameters for "
                    f"n={n_min} and d={objective.dim:,}, above "
                    f"max_paper_policy_params={max_paper_policy_params:,}; raise "
                    "max_paper_policy_params or use policy='evidence'"
                )
        self.agent = GAAAgent(
            objective,
            policy,
            gamma=gamma,
            window=window,
            policy_lr=policy_lr,
            optimizer=optimizer,
            backprop=backprop,
            server_learning_rate=self.server_learning_rate,
            trusted=trusted,
            max_paper_policy_params=max_paper_policy_params,
            seed=seed,
            policy_options=policy_options,
        )
        self.policy_name = policy if isinstance(policy, str) else type(policy).__name__

    # ------------------------------------------------------------------ hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the round; round 1 after rounds were played is a new episode."""
        if server_round == 1:
            self.agent.new_episode()
        return super().configure_train(server_round, arrays, config, grid)

    def min_nodes(self, f: int) -> int:
        """GAA needs one valid reply, whatever ``f``."""
        return 1

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Credit-weighted mean of the updates, credits from the agent."""
        check_model_keys(round_input.layout, self.agent.objective)
        updates, node_ids = round_input.updates, round_input.node_ids
        res = self.agent.step(round_input.global_flat, updates, node_ids)
        removed = set(res.removed)
        return AggregationResult(
            aggregate=res.aggregate.to(updates.device, updates.dtype),
            selected=tuple(r for r, i in enumerate(node_ids) if i not in removed),
            removed=tuple(r for r, i in enumerate(node_ids) if i in removed),
            weights=res.weights,
            metrics=self._round_metrics(res),
        )

    def _round_metrics(
        self, res: GAAStep
    ) -> dict[str, int | float | list[int] | list[float]]:
        """Credits of every known node, QV losses, reward, policy update flag."""
        credits = self.agent.credits()
        ids = [i for i in credits if i != TRUSTED_NODE_ID]
        out: dict[str, int | float | list[int] | list[float]] = {
            "credit-node-ids": ids,
            "credits": [credits[i] for i in ids],
            "qv-loss-before": res.qv_loss_before,
            "qv-loss-after": res.qv_loss_after,
            "reward": res.reward,
            "policy-updated": int(res.policy_updated),
            "episode": self.agent.episode,
        }
        if res.trusted_credit is not None:
            out["trusted-credit"] = res.trusted_credit
        return out

    # ---------------------------------------------------------------- GAA+
    def detect(self, k: int, margin: float | None = None) -> list[int]:
        """GAA+ (Justinian's GAAvernor, §4.5.1): the k lowest-credit node ids,
        leaving out nodes within ``margin`` nats of the best log-credit.

        ``None``: the evidence policy's slack (nodes it treats alike, which it
        never set apart, are not named; fewer than k may come back), 0 for the
        paper's policy; ``0``: the paper's k lowest.
        """
        if margin is None:
            margin = float(getattr(self.agent.policy, "slack", 0.0))
        return self.agent.detect(k, margin)

    def credits(self) -> dict[int, float]:
        """Current credit of every node seen so far (trusted worker: id -1)."""
        return self.agent.credits()

    def state_dict(self) -> dict[str, Any]:
        """:meth:`RobustStrategy.state_dict` and, under ``"agent"``, the agent's
        full state (ψ, its optimiser, log-credits, the episode window and
        counters, its RNG: :meth:`~flwr_byz.gaa.GAAAgent.state_dict`)."""
        return {**super().state_dict(), "agent": self.agent.state_dict()}

    def load_state_dict(
        self, state: Mapping[str, Any], node_ids: NodeIdMap = None
    ) -> None:
        """Resume from :meth:`state_dict` output, node ids mapped by ``node_ids``
        (the trusted worker's id, and ids it does not name, unchanged)."""
        super().load_state_dict(state, node_ids)
        self.agent.load_state_dict(_agent_state_mapped(state["agent"], node_ids))

    def _settings(self) -> list[tuple[str, object]]:
        a = self.agent
        return [
            ("Policy", self.policy_name),
            ("Window T / gamma", f"{a.window} / {a.gamma}"),
            ("Backprop", a.backprop),
            ("QV samples", int(a.objective.x.shape[0])),
            ("Trusted worker", a.trusted is not None),
        ]


def _agent_state_mapped(
    state: Mapping[str, Any], node_ids: NodeIdMap
) -> dict[str, Any]:
    """A :meth:`GAAAgent.state_dict` with its node ids mapped (order kept)."""
    out = dict(state)
    if node_ids is None:
        return out
    for key in ("logits", "episode_start"):
        out[key] = {map_node_id(int(i), node_ids): v for i, v in state[key].items()}
    out["buffer"] = [
        {**r, "node_ids": [map_node_id(int(i), node_ids) for i in r["node_ids"]]}
        for r in state["buffer"]
    ]
    layout = state.get("policy_layout")
    if layout is not None:
        out["policy_layout"] = {
            **layout,
            "slots": {
                map_node_id(int(i), node_ids): s for i, s in layout["slots"].items()
            },
        }
    return out
