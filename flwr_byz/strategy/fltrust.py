"""FLTrust: trust bootstrapped from the server's own update [Cao et al., 2021]."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.gaa import TrustedWorker
from flwr_byz.gaa.qv import LossFn, check_model_factory
from flwr_byz.validation import integer, renamed_argument, require

from .robust_strategy import RobustStrategy
from .server_model import check_model_keys, check_seed, round_generator


class FLTrust(RobustStrategy):
    """FLTrust [Cao et al., NDSS 2021] strategy: trust from a server-side update.

    Each round the server trains the global model itself on its small root
    dataset (`root_set`) with the clients' recipe (`trusted_lr`,
    `trusted_steps`, `trusted_batch_size`: plain SGD, as
    :class:`flwr_byz.gaa.TrustedWorker` does for GAA), giving ``Δ_0``. Each
    client update gets the trust score ``TS_i = ReLU(cos(Δ_i, Δ_0))``, is
    rescaled to ``‖Δ_0‖`` and the model moves by the trust-weighted mean
    (:func:`flwr_byz.aggregation.fltrust`). No Byzantine budget is needed: any
    share of attackers is tolerated as long as the root data is
    representative. A round with zero total trust (or a zero server update)
    keeps the model unchanged with status ``NO_UPDATE`` (4) and says why.
    Float buffers (BatchNorm running statistics) are part of every update:
    the server trains BatchNorm in ``train`` mode like a client, so ``Δ_0``
    carries running statistics, and the rescaling to ``‖Δ_0‖`` bounds what a
    reply with huge buffer values can move.

    Every round's MetricRecord carries, besides the common diagnostics
    (``scores`` = trust scores, ``weights`` = normalised trust, per
    ``node-ids``): ``suspected-node-ids`` (zero trust, ascending) and
    ``server-update-norm`` (``‖Δ_0‖``).

    Parameters
    ----------
    model_factory : Callable[[], torch.nn.Module]
        Builds the model; its ``state_dict`` float entries must match the
        ArrayRecord's (same keys in the same order).
    root_set : tuple[Tensor, Tensor] | Dataset | DataLoader | LabeledData
        The server's root dataset (the paper: ~100 clean samples; any size >= 1),
        in any form GAA's ``qv_set`` takes. ``qv_set``, its former name, still
        works for one release, with a DeprecationWarning.
    loss : Callable[[logits, targets], Tensor] or None
        Training loss of the server update; cross-entropy when ``None``.
    trusted_lr : float
        Learning rate of the server's local SGD; set it like the clients'.
    trusted_steps : int
        Local SGD steps per round; set it like the clients'.
    trusted_batch_size : int or None
        Mini-batch size (``None``: the whole root dataset per step).
    seed : int
        Seed of the server's mini-batches (drawn per round from ``(seed, round)``).
    **kwargs : Any
        Every argument of :class:`RobustStrategy` (``fraction_train``,
        ``min_train_nodes``, ``server_learning_rate``, ``device``, ...).
        ``num_malicious_nodes`` / ``malicious_fraction`` are accepted and
        ignored; ``weighted_aggregation`` is not supported.

    Examples
    --------
    >>> strategy = FLTrust(model_factory=lambda: build_model("mlp-yelp", 1024, 2),
    ...                    root_set=(x_root, y_root), trusted_lr=0.5)
    >>> result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=20)
    >>> result.train_metrics_clientapp[20]["suspected-node-ids"]
    """

    rule_name = "fltrust"

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        model_factory: Callable[[], nn.Module],
        root_set: Any = None,
        loss: LossFn | None = None,
        trusted_lr: float = 0.5,
        trusted_steps: int = 1,
        trusted_batch_size: int | None = None,
        seed: int = 0,
        qv_set: Any = None,
        **kwargs: Any,
    ) -> None:
        root_set = renamed_argument("qv_set", qv_set, "root_set", root_set)
        if root_set is None:
            raise ValueError(
                "FLTrust: root_set is required: the server's root dataset, e.g. "
                "root_set=(x, y) or a DataLoader"
            )
        super().__init__(**kwargs)
        check_model_factory(model_factory)
        require("trusted_batch_size", trusted_batch_size, integer(1, optional=True))
        self.seed = check_seed(seed)
        self.worker = TrustedWorker(
            model_factory,
            root_set,
            trusted_lr,
            trusted_steps,
            trusted_batch_size,
            loss,
            self.torch_device,
        )

    # ------------------------------------------------------------------ hooks
    def server_update(
        self, server_round: int, global_flat: torch.Tensor
    ) -> torch.Tensor:
        """``Δ_0``: the server's own update from ``θ_t`` on its root dataset."""
        theta = global_flat.to(self.worker.objective.device, torch.float32)
        return self.worker.update(theta, round_generator(self.seed, server_round))

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Trust-weighted mean with :func:`flwr_byz.aggregation.fltrust`."""
        from flwr_byz.aggregation import fltrust

        check_model_keys(round_input.layout, self.worker.objective)
        updates = round_input.updates
        delta0 = self.server_update(
            round_input.server_round, round_input.global_flat
        ).to(updates.device)
        result = fltrust(updates, delta0)
        norm = float(torch.linalg.vector_norm(delta0.double()))
        # Suspected: the zero-trust rows; reported: the server update's norm.
        return dataclasses.replace(
            result,
            suspected=result.removed,
            metrics={"server-update-norm": norm if norm < float("inf") else -1.0},
        )

    def _settings(self) -> list[tuple[str, object]]:
        w = self.worker
        return [
            ("Root samples", int(w.x.shape[0])),
            (
                "Server SGD lr / steps / batch",
                f"{w.lr} / {w.steps} / {w.batch_size or 'all'}",
            ),
        ]
