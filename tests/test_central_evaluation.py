"""The server's evaluation of the global model: accuracy, loss, worst class."""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord

from flwr_byz.app.central_evaluation import evaluate_model, make_evaluate_fn


class Fixed(torch.nn.Module):
    """Predicts class 0 for a positive first feature, else class 1; 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, :1] * self.scale
        return torch.cat([first, -first, torch.full_like(first, -1e3)], dim=1)


def test_per_class_accuracy_counts_each_class_on_its_own() -> None:
    x = torch.tensor([[1.0], [1.0], [1.0], [-1.0], [1.0], [-1.0]])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    accuracy, _, per_class = evaluate_model(Fixed(), x, y, batch_size=4)
    assert accuracy == 5 / 6
    assert per_class[:2] == [1.0, 2 / 3] and math.isnan(per_class[2])


def test_the_evaluate_fn_reports_the_worst_class_present() -> None:
    model = Fixed()
    x = torch.tensor([[1.0], [1.0], [-1.0], [1.0]])
    y = torch.tensor([0, 0, 1, 1])
    metrics = make_evaluate_fn(model, x, y)(1, ArrayRecord(model.state_dict()))
    assert metrics["accuracy"] == 0.75
    assert metrics["worst-class-accuracy"] == 0.5
