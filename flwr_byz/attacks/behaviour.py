"""Apply an update-only attack, with randomness from (seed, node, round) only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from flwr_byz.seeding import torch_stream

from .config import UPDATE_ATTACKS, merged
from .tampering import random_fault, scaling, sign_flip, uniform_noise

_TAG_TAMPER = 0x54414D50  # "TAMP"


def attack_generator(seed: int, node: int, server_round: int) -> torch.Generator:
    """A CPU generator seeded from (seed, node, round) only: replays in any process."""
    return torch_stream(seed, node, server_round, _TAG_TAMPER)


def tamper_update(
    attack: str,
    delta: torch.Tensor,
    cfg: Mapping[str, Any],
    generator: torch.Generator,
    learning_rate: float,
) -> torch.Tensor:
    """The update a Byzantine node sends instead of ``delta``.

    Parameters
    ----------
    attack : str
        One of ``UPDATE_ATTACKS``: random-fault, uniform-noise, sign-flip, scaling.
    delta : torch.Tensor
        The node's honest update ``w_local − w_global``.
    cfg : Mapping
        Run config; the attack parameters (noise-mean, noise-std, noise-bound,
        scale-factor) default to ``ATTACK_DEFAULTS``.
    generator : torch.Generator
        Source of the noise.
    learning_rate : float
        The client's learning rate λ: noise attacks send ``−λ·g_noise``.
    """
    c = merged(cfg)
    if attack == "random-fault":
        return random_fault(
            delta,
            generator,
            float(c["noise-mean"]),
            float(c["noise-std"]),
            learning_rate,
        )
    if attack == "uniform-noise":
        return uniform_noise(delta, generator, float(c["noise-bound"]), learning_rate)
    if attack == "sign-flip":
        return sign_flip(delta)
    if attack == "scaling":
        return scaling(delta, float(c["scale-factor"]))
    raise ValueError(
        f"attack={attack!r} does not tamper an update on its own; valid values here: "
        f"{', '.join(UPDATE_ATTACKS)}"
    )
