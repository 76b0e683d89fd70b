"""What the server holds: the quasi-validation (QV) set and a global test set."""

from __future__ import annotations

from dataclasses import dataclass

from flwr_byz.data.labeled_data import LabeledData


@dataclass(frozen=True)
class ServerData:
    """Server-side data for GAA's QV loss and for global evaluation.

    Attributes
    ----------
    qv : LabeledData
        The working QV set (``qv-size`` samples from ``qv-source``); no client's data
        unless ``qv-source`` is ``partition:<id>``.
    test : LabeledData
        The global test set, standardised with its own statistics.
    num_features, num_classes : int
        Shape of the task (what the model needs).
    """

    qv: LabeledData
    test: LabeledData
    num_features: int
    num_classes: int
