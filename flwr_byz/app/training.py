"""Local training and evaluation of one client (plain torch, no Flower)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from flwr_byz.attacks import adaptive_fault_gradient
from flwr_byz.seeding import torch_stream

#: Tag of a client's batch stream (:func:`batch_generator`): "BATC".
BATCH_STREAM_TAG = 0x42415443


def batch_generator(seed: int, partition_id: int, server_round: int) -> torch.Generator:
    """The generator a client draws its batches of ``server_round`` from: a pure
    function of the run's seed, the node's partition and the round."""
    return torch_stream(seed, partition_id, server_round, BATCH_STREAM_TAG)


def _batch(
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    m = labels.shape[0]
    if batch_size <= 0 or batch_size >= m:
        return features, labels
    # Indices drawn on CPU so the sequence is the same on every device.
    idx = torch.randperm(m, generator=generator)[:batch_size].to(features.device)
    return features[idx], labels[idx]


def sgd_steps(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    learning_rate: float,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """Run ``steps`` plain SGD steps on cross entropy; return the mean step loss.

    ``batch_size = 0`` (or >= the data size) uses the full batch, so one step gives
    the papers' FedSGD update ``Δ = −λ g`` exactly.
    """
    model.train()
    total = 0.0
    for _ in range(steps):
        x, y = _batch(features, labels, batch_size, generator)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p for p in model.parameters()])
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p.sub_(learning_rate * g)
        total += float(loss.detach())
    return total / max(steps, 1)


def adaptive_fault_steps(
    model: nn.Module,
    d0: tuple[torch.Tensor, torch.Tensor],
    d1: tuple[torch.Tensor, torch.Tensor],
    alpha: float,
    steps: int,
    learning_rate: float,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """SGD on the adaptive-fault objective ``ℓ(D0) − α ℓ(D1)``; return its mean."""
    model.train()
    total = 0.0
    for _ in range(steps):
        x1, y1 = _batch(d1[0], d1[1], batch_size, generator)
        grads = adaptive_fault_gradient(model, d0, (x1, y1), alpha)
        with torch.no_grad():
            objective = F.cross_entropy(model(d0[0]), d0[1]) - alpha * F.cross_entropy(
                model(x1), y1
            )
            for p, g in zip(model.parameters(), grads, strict=True):
                p.sub_(learning_rate * g)
        total += float(objective.detach())
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on the data."""
    model.eval()
    if labels.shape[0] == 0:
        return 0.0, 0.0
    logits = model(features)
    loss = float(F.cross_entropy(logits, labels))
    acc = float((logits.argmax(dim=1) == labels).float().mean())
    return loss, acc
