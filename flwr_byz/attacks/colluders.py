"""What defence-aware colluders know: their own data, their own samples of the QV
distribution, the model, and the defence's rule.

They never hold the server's QV samples: :func:`colluder_qv_samples` draws from the
QV source's pool and leaves out every sample of the server's working QV set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from flwr_byz.aggregation.bounds import byzantine_budget
from flwr_byz.data.labeled_data import LabeledData
from flwr_byz.records import ModelLayout

from .tailored import Aggregate

#: Pool sizes tried, largest first, for a QV source whose size is not known ahead.
_POOL_SIZES = (20000, 10000, 5000, 2000, 1000, 500, 200, 100, 50, 20)


@dataclass
class Colluders:
    """The colluders' knowledge (all of it the attacker's own).

    Attributes
    ----------
    model_factory : Callable[[], nn.Module]
        Builds the federation's model architecture.
    own : tuple[torch.Tensor, torch.Tensor]
        The colluders' pooled training data (features, labels).
    qv : tuple[torch.Tensor, torch.Tensor]
        Their own samples of the QV set's distribution (never the server's).
    num_classes : int
        Classes of the task.
    learning_rate, local_steps : float, int
        The honest clients' training recipe (to imitate a server update).
    """

    model_factory: Callable[[], nn.Module]
    own: tuple[torch.Tensor, torch.Tensor]
    qv: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    learning_rate: float = 0.5
    local_steps: int = 1

    def model_at(self, arrays: Mapping[str, np.ndarray]) -> nn.Module:
        """The model with the global weights ``arrays`` (the arrays sent this round)."""
        model = self.model_factory()
        state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}
        model.load_state_dict(state)
        return model


def flat_gradient(
    model: nn.Module,
    layout: ModelLayout,
    features: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """``∇θ ℓ(θ; features, labels)`` (mean cross entropy) as one float64 vector in
    ``layout``'s order; float arrays that are not parameters (buffers) get 0."""
    names = dict(model.named_parameters())
    params = [p for p in names.values() if p.requires_grad]
    loss = F.cross_entropy(model(features), labels)
    grads = dict(zip(names, torch.autograd.grad(loss, params), strict=True))
    flat = torch.zeros(layout.d, dtype=torch.float64)
    for _, key, start, stop in layout.segments():
        if key in grads:
            flat[start:stop] = grads[key].detach().reshape(-1).to(torch.float64)
    return flat


def flat_model(
    model: nn.Module, layout: ModelLayout
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A map from a flat float vector (``layout``'s order) to the model's state."""
    base = {k: v.detach() for k, v in model.state_dict().items()}

    def state(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(base)
        for i, key, start, stop in layout.segments():
            out[key] = flat[start:stop].reshape(layout.shapes[i]).to(base[key].dtype)
        return out

    return state


def _qv_pool(cfg: Mapping[str, Any], num_partitions: int) -> LabeledData:
    from flwr_byz.data import GENERATED, QV_DISTRIBUTION, load_server_data

    sizes = _POOL_SIZES
    generated = GENERATED.get(str(cfg.get("dataset", "yelp-style")))
    if generated is not None and cfg.get("qv-source", "held-out-region") == (
        "held-out-region"
    ):
        sizes = (generated.qv_pool_size, *sizes)
    last: ValueError | None = None
    for size in sizes:
        try:
            drawn = {**cfg, **QV_DISTRIBUTION, "qv-size": size}
            data = load_server_data(drawn, num_partitions).qv
        except ValueError as err:  # the pool holds fewer: try a smaller draw
            last = err
            continue
        return data
    raise ValueError(f"the QV source holds too few samples for the colluders: {last}")


def colluder_qv_samples(
    cfg: Mapping[str, Any], num_partitions: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``size`` samples of the QV source's distribution, none of them a
    sample of the server's working QV set.

    Raises
    ------
    ValueError
        When the source holds no sample besides the server's.
    """
    from flwr_byz.data import load_server_data

    pool = _qv_pool(cfg, num_partitions)
    server = load_server_data(cfg, num_partitions).qv.features
    # A pool row equal to a server row is the server's sample: left out.
    same = (pool.features[:, None, :] == server[None, :, :]).all(dim=2).any(dim=1)
    keep = torch.nonzero(~same).flatten()[:size]
    if keep.numel() == 0:
        raise ValueError(
            "the QV source holds no sample besides the server's QV set: the "
            "colluders have nothing of the QV distribution to draw; use a larger "
            "'qv-source' or another attack"
        )
    return pool.features[keep].clone(), pool.labels[keep].clone()


def load_colluders(
    cfg: Mapping[str, Any], partitions: list[int], num_partitions: int
) -> Colluders:
    """The colluders of a simulation: the compromised partitions' training data,
    ``colluder-qv-size`` samples of the QV distribution, the configured model.

    Raises
    ------
    ValueError
        No partition, a ``target-class`` the task does not have, or a QV source
        with no sample besides the server's.
    """
    from flwr_byz.data import dataset_shape, load_partition
    from flwr_byz.models import build_model

    if not partitions:
        raise ValueError("no compromised partition: the colluders hold no data")
    num_features, num_classes = dataset_shape(cfg)
    target = int(cfg.get("target-class", 0))
    if target >= num_classes:
        raise ValueError(
            f"target-class={target} is not valid; valid values: 0..{num_classes - 1} "
            "(the task's classes)"
        )
    parts = [load_partition(cfg, int(p), num_partitions).train for p in partitions]
    own = (
        torch.cat([p.features for p in parts]),
        torch.cat([p.labels for p in parts]),
    )
    qv = colluder_qv_samples(cfg, num_partitions, int(cfg.get("colluder-qv-size", 200)))
    model_name = str(cfg.get("model", "auto"))
    return Colluders(
        model_factory=lambda: build_model(model_name, num_features, num_classes),
        own=own,
        qv=qv,
        num_classes=num_classes,
        learning_rate=float(cfg.get("learning-rate", 0.5)),
        local_steps=int(cfg.get("local-steps", 1)),
    )


def imitated_update(
    colluders: Colluders, model: nn.Module, layout: ModelLayout
) -> torch.Tensor:
    """The update the honest recipe (``local_steps`` full-batch SGD steps) makes
    on the colluders' QV samples: their guess of FLTrust's server update."""
    state = flat_model(model, layout)
    theta = torch.from_numpy(
        layout.flatten(
            {k: v.numpy() for k, v in model.state_dict().items()}, np.float64
        )
    )
    w = theta.clone()
    probe = colluders.model_factory()
    for _ in range(colluders.local_steps):
        probe.load_state_dict(state(w))
        w = w - colluders.learning_rate * flat_gradient(probe, layout, *colluders.qv)
    return w - theta


def defence_aggregate(
    cfg: Mapping[str, Any],
    n: int,
    colluders: Colluders | None = None,
    model: nn.Module | None = None,
    layout: ModelLayout | None = None,
) -> Aggregate | None:
    """The defence's rule as the colluders can run it on ``n`` updates, or None.

    Stateless rules run as the server runs them (the registry's aggregate
    function with the defence's ``f = floor(assumed-byzantine-fraction · n)``;
    FedAvg is the mean). FLTrust runs with the colluders' imitation of the server
    update and Zeno scores on their own QV samples (both need ``colluders``,
    ``model`` and ``layout``). GAA (stateful credits) has no stateless
    aggregate: None.
    """
    from flwr_byz.aggregation import (
        fltrust,
        zeno,
    )
    from flwr_byz.aggregation.registry import RULE_BY_NAME

    name = str(cfg.get("strategy", "fedavg"))
    alpha = float(cfg.get("assumed-byzantine-fraction", 0.0))
    f = byzantine_budget(alpha, n)
    if name in ("fedavg", "mean"):
        return lambda x: x.mean(dim=0)
    rule = RULE_BY_NAME.get(name)
    if rule is not None and not rule.needs_server_data:
        return _rule_aggregate(rule, cfg, f)
    if name in ("fltrust", "zeno"):
        if colluders is None or model is None or layout is None:
            return None
        if name == "fltrust":
            server = imitated_update(colluders, model, layout)
            return lambda x: fltrust(x, server.to(x.dtype)).aggregate
        lr = float(cfg.get("learning-rate", 0.5))
        rho = float(cfg.get("zeno-rho", 0.0005)) / (lr * lr)
        b = min(math.floor(float(cfg.get("zeno-b-fraction", 0.5)) * n), n - 1)
        state = flat_model(model, layout)
        theta = torch.from_numpy(
            layout.flatten(
                {k: v.numpy() for k, v in model.state_dict().items()}, np.float64
            )
        )
        probe = colluders.model_factory()
        qx, qy = colluders.qv

        @torch.no_grad()
        def loss(w: torch.Tensor) -> float:
            out = functional_call(probe, state(w), (qx,))
            return float(F.cross_entropy(out, qy))

        return lambda x: (
            zeno(x, theta.to(x.dtype), loss, b, rho, 1.0, batched=False).aggregate
        )
    return None


def _rule_aggregate(rule: Any, cfg: Mapping[str, Any], f: int) -> Aggregate:
    """The registry entry's aggregate on a matrix, with the run config's values of
    the rule's parameters (``Rule.params``) and the budget ``f``."""
    from flwr_byz.aggregation.round_input import RoundInput

    given = {}
    for param in rule.params:
        key = rule.config_key(param)
        if key and key in cfg:
            given[param.name] = cfg[key]
    params = rule.resolve_params(given)

    def run(x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        round_input = RoundInput(
            server_round=0,
            updates=x,
            node_ids=list(range(n)),
            weights=None,
            f=f,
            global_flat=torch.zeros(d, dtype=x.dtype),
        )
        return rule.decide(round_input, **params).aggregate

    return run
