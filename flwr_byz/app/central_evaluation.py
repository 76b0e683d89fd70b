"""Server-side evaluation of the global model on a held-out test set."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 4096,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(features, labels)``."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    for start in range(0, len(labels), batch_size):
        x = features[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
    n = max(1, len(labels))
    return correct / n, loss_sum / n


def make_evaluate_fn(
    model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """An ``evaluate_fn`` for ``Strategy.start``: global accuracy and loss."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy, loss = evaluate_model(model, features, labels)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    return evaluate_fn
