"""What one client holds: its own training and local test split."""

from __future__ import annotations

from dataclasses import dataclass

from flwr_byz.data.labeled_data import LabeledData


@dataclass(frozen=True)
class ClientData:
    """One partition, split into ``train`` and a local ``test`` part.

    Both are standardised with the mean/std of ``train`` (the client's own data).
    """

    train: LabeledData
    test: LabeledData
