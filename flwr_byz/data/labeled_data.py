"""A feature matrix with its integer labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabeledData:
    """Samples of one split: ``features`` ``(m, d)`` float32, ``labels`` ``(m,)`` int64.

    Attributes
    ----------
    features : torch.Tensor
        ``(m, d)`` float32 feature matrix (images are flattened to ``d = C*H*W``).
    labels : torch.Tensor
        ``(m,)`` int64 class indices in ``[0, num_classes)``.
    """

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.dim() != 2:
            raise ValueError(
                f"features must be 2-D (m, d); got shape {tuple(self.features.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"labels must be 1-D with {self.features.shape[0]} entries; "
                f"got shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])
