"""What the strategies that hold their own data (GAA, FLTrust, Zeno) share."""

from __future__ import annotations

import torch

from flwr_byz.gaa.qv import QVObjective
from flwr_byz.validation import integer, require

from .model_layout import ModelLayout


def check_model_keys(layout: ModelLayout | None, objective: QVObjective) -> None:
    """Refuse (ValueError) a ``model_factory`` whose float keys differ from the record.

    The flat vectors the strategy builds follow the ArrayRecord's float arrays in key
    order; the server-side model must read them in the same order. Legacy
    ``Parameters`` name their arrays by position (``"0"``, ``"1"``, ...): there the
    float arrays' shapes must match the model's, in order.
    """
    if layout is None:
        return
    floats = [i for i, o in enumerate(layout.offsets) if o >= 0]
    if layout.keys == tuple(str(i) for i in range(len(layout.keys))):
        shapes = [tuple(layout.shapes[i]) for i in floats]
        expected = [tuple(s) for s in objective.shapes]
        if shapes != expected:
            raise ValueError(
                f"model_factory: its state_dict float shapes {expected[:3]}... do "
                f"not match the Parameters' float arrays {shapes[:3]}... (same "
                "arrays in the same order needed)"
            )
        return
    float_keys = [layout.keys[i] for i in floats]
    if float_keys != objective.keys:
        raise ValueError(
            "model_factory: its state_dict float keys "
            f"{objective.keys[:3]}... do not match the ArrayRecord's "
            f"{float_keys[:3]}... (same keys in the same order needed)"
        )


def round_generator(seed: int, server_round: int) -> torch.Generator:
    """A generator that depends only on (seed, round): reruns and resumes repeat."""
    return torch.Generator().manual_seed(
        (int(seed) * 1_000_003 + int(server_round)) % (2**63 - 1)
    )


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is an integer >= 0, else raise ValueError."""
    return require("seed", seed, integer(0))
