"""Zeno: suspicion-based aggregation by a descendant score [Xie et al., 2019]."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.gaa.qv import LossFn, QVObjective, check_model_factory
from flwr_byz.validation import integer, number, require

from .robust_strategy import RobustStrategy
from .server_model import check_model_keys, check_seed, round_generator


class Zeno(RobustStrategy):
    """Zeno [Xie, Koyejo & Gupta, ICML 2019] strategy: rank updates on a server batch.

    Each round the server draws a mini-batch B of ``batch_size`` samples of its
    own data (`qv_set`; drawn from ``(seed, round)``, so a seed repeats) and
    scores every valid update by the stochastic descendant score

    ``score_i = f_B(θ_t) − f_B(θ_t + γ·Δ_i) − ρ·‖Δ_i‖²``

    (higher is better; the paper's ``f_r(x) − f_r(x − γu) − ρ‖u‖²`` with the
    gradient ``u`` replaced by the update ``Δ = −λ u``: pass
    ``gamma = γ_paper/λ`` and ``rho = ρ_paper/λ²``; ``gamma = 1`` evaluates the
    model where the client's own step took it). The ``b`` lowest-scoring updates
    are discarded and the model moves by the mean of the other ``n − b``
    (:func:`flwr_byz.aggregation.zeno`). ``b`` must be at least the number of
    Byzantine replies, and may exceed half of them: Zeno needs a single honest
    reply. A NaN/inf score ranks worst; ties keep the lowest index.

    Every round's MetricRecord carries, besides the common diagnostics
    (``scores`` = Zeno scores per ``node-ids``; a non-finite score is reported
    as ``-1.79e308``): ``suspected-node-ids`` (the ``b`` discarded, ascending),
    ``zeno-loss-before`` (``f_B(θ_t)`` on this round's batch) and
    ``zeno-batch-size``.

    Parameters
    ----------
    model_factory : Callable[[], torch.nn.Module]
        Builds the model; its ``state_dict`` float entries must match the
        ArrayRecord's (same keys in the same order).
    qv_set : tuple[Tensor, Tensor] | Dataset | DataLoader | LabeledData
        The server's data set the batches are drawn from.
    loss : Callable[[logits, targets], Tensor] or None
        Mean loss on a batch; cross-entropy when ``None``.
    rho : float
        ``ρ >= 0`` on updates (see above). Default ``5e-4 / 0.5²`` = the paper's
        ``ρ = 5e-4`` for clients with λ = 0.5.
    gamma : float
        ``γ > 0`` on updates (default 1).
    batch_size : int or None
        ``n_r``, samples per round (the paper: 4); ``None`` or more than the set
        holds: the whole set.
    num_malicious_nodes : int or None
        ``b``, updates discarded each round (the paper's ``b >= q``).
    malicious_fraction : float or None
        ``b = floor(malicious_fraction · valid replies)``, in ``[0, 1)`` (unlike
        the majority-based rules, ``>= 0.5`` is allowed). Give exactly one of the
        two.
    seed : int
        Seed of the per-round batches.
    **kwargs : Any
        Every other argument of :class:`RobustStrategy` (``fraction_train``,
        ``min_train_nodes``, ``server_learning_rate``, ``device``, ...);
        ``weighted_aggregation`` is not supported.

    Examples
    --------
    >>> strategy = Zeno(model_factory=lambda: build_model("mlp-yelp", 1024, 2),
    ...                 qv_set=(x_qv, y_qv), malicious_fraction=0.7)
    >>> result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=20)
    >>> result.train_metrics_clientapp[20]["suspected-node-ids"]
    """

    rule_name = "zeno"
    uses_f = False  # checked here: Zeno's budget may be a majority

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        qv_set: Any,
        loss: LossFn | None = None,
        rho: float = 0.002,
        gamma: float = 1.0,
        batch_size: int | None = 4,
        num_malicious_nodes: int | None = None,
        malicious_fraction: float | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if num_malicious_nodes is None and malicious_fraction is None:
            raise ValueError(
                "Zeno needs b, the number of updates to discard: give "
                "num_malicious_nodes (an integer >= 0) or malicious_fraction "
                "(a number in [0, 1)), got neither"
            )
        if num_malicious_nodes is not None and malicious_fraction is not None:
            raise ValueError(
                "give at most one of num_malicious_nodes and malicious_fraction, "
                f"got num_malicious_nodes={num_malicious_nodes!r} and "
                f"malicious_fraction={malicious_fraction!r}"
            )
        if malicious_fraction is not None:
            require(
                "malicious_fraction",
                malicious_fraction,
                number(0.0, 1.0, high_open=True),
            )
        super().__init__(num_malicious_nodes=num_malicious_nodes, **kwargs)
        if malicious_fraction is not None:
            self.malicious_fraction = float(malicious_fraction)
        require("rho", rho, number(0.0))
        require("gamma", gamma, number(0.0, low_open=True))
        require("batch_size", batch_size, integer(1, optional=True))
        check_model_factory(model_factory)
        self.rho, self.gamma = float(rho), float(gamma)
        self.batch_size = batch_size
        self.seed = check_seed(seed)
        self.objective = QVObjective(model_factory, qv_set, loss, self.torch_device)

    # ------------------------------------------------------------------ hooks
    def batch_indices(self, server_round: int) -> torch.Tensor:
        """Indices of this round's batch of the server set (sorted)."""
        m = int(self.objective.x.shape[0])
        if self.batch_size is None or self.batch_size >= m:
            return torch.arange(m)
        gen = round_generator(self.seed, server_round)
        return torch.randperm(m, generator=gen)[: self.batch_size].sort().values

    def batch_loss(self, server_round: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``f_B`` of this round: ``(k, d)`` flat weights -> ``(k,)`` batch losses."""
        obj = self.objective
        idx = self.batch_indices(server_round).to(obj.x.device)
        x, y = obj.x[idx], obj.y[idx]

        def one(flat: torch.Tensor) -> torch.Tensor:
            out = functional_call(obj.model, obj.unflatten(flat), (x,))
            return obj.loss_fn(out, y)

        def batch(flats: torch.Tensor) -> torch.Tensor:
            flats = flats.to(obj.x.device)
            try:
                return vmap(one)(flats)
            except RuntimeError:  # a user model or loss vmap cannot batch
                return torch.stack([one(row) for row in flats])

        return batch

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Mean of the ``n − b`` best-scoring updates (``aggregation.zeno``)."""
        from flwr_byz.aggregation import zeno

        check_model_keys(round_input.layout, self.objective)
        server_round, global_flat = round_input.server_round, round_input.global_flat
        loss_fn = self.batch_loss(server_round)
        result = zeno(
            round_input.updates,
            global_flat,
            loss_fn,
            round_input.f,
            self.rho,
            self.gamma,
        )
        with torch.no_grad():
            before = float(loss_fn(global_flat[None])[0])
        # MetricRecords and results.json hold finite numbers only.
        scores = tuple(
            s if math.isfinite(s) else -sys.float_info.max for s in result.scores
        )
        # Suspected: the b discarded rows.
        return AggregationResult(
            result.aggregate,
            result.selected,
            result.removed,
            scores,
            result.weights,
            suspected=result.removed,
            metrics={
                "zeno-loss-before": before if math.isfinite(before) else -1.0,
                "zeno-batch-size": int(self.batch_indices(server_round).numel()),
            },
        )

    def _settings(self) -> list[tuple[str, object]]:
        return [
            ("rho / gamma (update units)", f"{self.rho} / {self.gamma}"),
            ("Batch size n_r", self.batch_size or "all"),
            ("Server samples", int(self.objective.x.shape[0])),
        ]
