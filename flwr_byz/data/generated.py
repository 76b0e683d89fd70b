"""Generated Yelp-style / Healthcare-style federated feature datasets (no download).

Pure functions of ``(spec, seed, region)``: a client builds only its own region, the
server only the held-out QV region and the global test set. The structure is
described in :class:`flwr_byz.data.spec.GeneratorSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from flwr_byz.data.seeding import (
    REGION_PARAMS_STREAM,
    REGION_SAMPLES_STREAM,
    REGION_TEST_STREAM,
    TASK_STREAM,
    rng_for,
)
from flwr_byz.data.spec import GeneratorSpec

#: Region index of the held-out QV region; client regions are 0, 1, 2, ...
HELD_OUT_REGION = -1


@dataclass(frozen=True)
class _Region:
    offset: np.ndarray  # (k,)
    class_shift: np.ndarray  # (C, k)
    ambient_offset: np.ndarray  # (D,)
    prior: np.ndarray  # (C,)


def _region_key(region: int) -> int:
    # Shift by one so the held-out region (-1) gets key 0, distinct from every client.
    if region < HELD_OUT_REGION:
        raise ValueError(f"region must be >= 0 (or HELD_OUT_REGION); got {region}")
    return region + 1


@lru_cache(maxsize=8)
def _task(spec: GeneratorSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The shared subspace basis ``U`` (D, k) and the class means (C, k)."""
    rng = rng_for(seed, TASK_STREAM)
    gauss = rng.standard_normal((spec.num_features, spec.latent_dim))
    basis, _ = np.linalg.qr(gauss)
    # Class means on orthogonal axes of the subspace: every pair of classes is
    # equally far apart (class_separation * sqrt(2)), so the difficulty does not
    # depend on the seed's luck; the random basis provides the orientation.
    means = np.zeros((spec.num_classes, spec.latent_dim))
    means[np.arange(spec.num_classes), np.arange(spec.num_classes)] = 1.0
    return basis, spec.class_separation * means


def _region(spec: GeneratorSpec, seed: int, region: int) -> _Region:
    rng = rng_for(seed, REGION_PARAMS_STREAM, _region_key(region))
    offset = spec.region_shift * rng.standard_normal(spec.latent_dim)
    class_shift = spec.region_class_shift * rng.standard_normal(
        (spec.num_classes, spec.latent_dim)
    )
    ambient_offset = spec.ambient_shift * rng.standard_normal(spec.num_features)
    prior = rng.dirichlet(np.full(spec.num_classes, spec.label_prior_concentration))
    return _Region(offset, class_shift, ambient_offset, prior)


def _features(
    spec: GeneratorSpec,
    seed: int,
    params: _Region,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    basis, means = _task(spec, seed)
    m = labels.shape[0]
    z = (
        means[labels]
        + params.class_shift[labels]
        + params.offset
        + spec.latent_noise * rng.standard_normal((m, spec.latent_dim))
    )
    noise = spec.ambient_noise * rng.standard_normal((m, spec.num_features))
    return z @ basis.T + params.ambient_offset + noise


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(x.astype(np.float32)),
        torch.from_numpy(y.astype(np.int64)),
    )


def region_prior(spec: GeneratorSpec, seed: int, region: int) -> np.ndarray:
    """The label prior ``p_r`` of ``region`` (sums to 1)."""
    return _region(spec, seed, region).prior


def generate_region(
    spec: GeneratorSpec, seed: int, region: int, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (unstandardised) samples of one region, labels drawn from its prior.

    Parameters
    ----------
    spec : GeneratorSpec
        Dataset knobs.
    seed : int
        Run seed (>= 0).
    region : int
        Client region ``0, 1, ...`` or :data:`HELD_OUT_REGION`.
    num_samples : int
        Number of samples.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(num_samples, num_features)`` float32 features and int64 labels.
    """
    params = _region(spec, seed, region)
    rng = rng_for(seed, REGION_SAMPLES_STREAM, _region_key(region))
    labels = rng.choice(spec.num_classes, size=num_samples, p=params.prior)
    return _to_tensors(_features(spec, seed, params, labels, rng), labels)


def generate_region_test(
    spec: GeneratorSpec, seed: int, region: int, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced raw test samples of one client region (own stream).

    Labels cycle ``0, 1, ..., C-1`` (starting at ``region mod C``) so the union over
    regions is balanced as in the papers' test sets (1000 samples per class).
    """
    params = _region(spec, seed, region)
    rng = rng_for(seed, REGION_TEST_STREAM, _region_key(region))
    labels = (np.arange(num_samples) + region) % spec.num_classes
    return _to_tensors(_features(spec, seed, params, labels, rng), labels)


def generate_global_test(
    spec: GeneratorSpec, seed: int, num_regions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw global test set: ``test_per_region`` balanced samples per client region."""
    parts = [
        generate_region_test(spec, seed, r, spec.test_per_region)
        for r in range(num_regions)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def generate_qv_pool(
    spec: GeneratorSpec, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out region's full QV pool (``qv_pool_size`` raw samples)."""
    return generate_region(spec, seed, HELD_OUT_REGION, spec.qv_pool_size)
