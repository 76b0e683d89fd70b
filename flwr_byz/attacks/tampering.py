"""Tampering algorithms that need only the attacker's own update (non-omniscient).

Every function maps the honest update ``Δ = w_local − w_global`` (any shape) to the
update the attacker sends instead. Randomness comes only from the explicit
``torch.Generator`` argument, so a tampered update replays bit-identically.

The noise attacks of the papers are defined on the *gradient* ``g`` that FedSGD
sends (``Δ = −λ g``); they take the client's learning rate λ to produce the update
``−λ g_noise`` that the same client would send after one SGD step on that gradient.
"""

from __future__ import annotations

import torch


def _noise_like(delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Sample on the generator's device, then move: a CPU generator works for any
    # tensor, and the same seed gives the same numbers on CPU and CUDA.
    dtype = delta.dtype if delta.is_floating_point() else torch.float32
    return torch.empty(delta.shape, dtype=dtype, device=generator.device)


def random_fault(
    delta: torch.Tensor,
    generator: torch.Generator,
    mean: float = 0.5,
    std: float = 2e-6,
    learning_rate: float = 1.0,
) -> torch.Tensor:
    """Random fault (GAA §5.1.3, after Blanchard et al.): a Gaussian gradient.

    The attacker's gradient is ``g ~ N(mean·1, std²·I)``; the returned update is
    ``−learning_rate · g``. ``delta`` only fixes shape, dtype and device.
    """
    g = _noise_like(delta, generator).normal_(mean, std, generator=generator)
    return (-learning_rate * g).to(delta.device)


def uniform_noise(
    delta: torch.Tensor,
    generator: torch.Generator,
    bound: float = 0.25,
    learning_rate: float = 1.0,
) -> torch.Tensor:
    """Uniform noise (FABA §4): each gradient coordinate drawn from ``U(−a, a)``.

    Returns ``−learning_rate · g`` with ``g ~ U(−bound, bound)`` per coordinate.
    """
    g = _noise_like(delta, generator).uniform_(-bound, bound, generator=generator)
    return (-learning_rate * g).to(delta.device)


def sign_flip(delta: torch.Tensor) -> torch.Tensor:
    """Sign flip: send ``−Δ`` (the update pointing uphill)."""
    return -delta


def scaling(delta: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    """Scaling (model-replacement boosting): send ``factor · Δ``."""
    return factor * delta


def label_flip(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flipping (data poisoning): ``y -> C − 1 − y``.

    Only the labels change; the attacker then trains honestly on
    (features, flipped labels).
    """
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels outside [0, {num_classes}) cannot be flipped with "
            f"num_classes={num_classes}"
        )
    return (num_classes - 1) - labels
