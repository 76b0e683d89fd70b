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
) -> tuple[float, float, list[float]]:
    """Accuracy, mean cross-entropy and per-class accuracy (recall) of ``model``
    on ``(features, labels)``; a class with no test sample reads NaN."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    hits: torch.Tensor | None = None
    totals: torch.Tensor | None = None
    for start in range(0, len(labels), batch_size):
        x = features[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        right = logits.argmax(dim=1) == y
        correct += int(right.sum())
        k = logits.shape[1]
        batch_hits = torch.bincount(y[right], minlength=k)[:k].cpu()
        batch_totals = torch.bincount(y, minlength=k)[:k].cpu()
        hits = batch_hits if hits is None else hits + batch_hits
        totals = batch_totals if totals is None else totals + batch_totals
    n = max(1, len(labels))
    per_class: list[float] = []
    if hits is not None and totals is not None:
        per_class = [
            h / t if t else float("nan")
            for h, t in zip(hits.tolist(), totals.tolist(), strict=True)
        ]
    return correct / n, loss_sum / n, per_class


def make_evaluate_fn(
    model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """An ``evaluate_fn`` for ``Strategy.start``: global accuracy and loss, and the
    lowest accuracy on any one class (an attack can sink one class while the
    global accuracy hides it)."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy, loss, per_class = evaluate_model(model, features, labels)
        present = [a for a in per_class if a == a]
        metrics = {"accuracy": accuracy, "loss": loss}
        if present:
            metrics["worst-class-accuracy"] = min(present)
        return MetricRecord(metrics)

    return evaluate_fn
