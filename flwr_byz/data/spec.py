"""The knobs of the generated Yelp-style and Healthcare-style feature datasets, and
the shape of the embedded real ones (:data:`EMBEDDED`).

Calibration (the papers' MLPs trained centrally on the pooled client training data,
Adam lr 1e-3, batch 64, 2 epochs; accuracy on the class-balanced global test set;
``tests/test_data_generated.py``), seeds 0-4:

- Yelp-style (10 regions, MLP 1024-10-2 sigmoid): 0.836-0.860 (band 0.80-0.90).
- Healthcare-style (50 regions, MLP 1024-32-10 sigmoid): 0.714-0.733 (band 0.65-0.80).

Honest federated training from a random init (mean of full-batch local SGD
updates), seeds 0-2, accuracy at round 20: Yelp-style, 10 clients: 0.83-0.86 with
one local step at lr 0.3 or 0.5, or five at lr 0.1 (one step at lr 0.1: 0.66-0.79,
0.74-0.82 at round 30). Healthcare-style, 50 clients, seed 0: 0.73 with five steps
at lr 0.5, 0.62 (0.67 at round 30) with one.

Which knob moves what: ``class_separation`` / ``latent_noise`` set the ceiling
(Yelp-style: 4.0 / 2.2 gives ~0.85, 3.0 / 2.2 ~0.77; Healthcare-style: 6.0 / 2.2
gives ~0.72, 6.5 / 2.2 ~0.77, 7.5 / 2.2 ~0.85); ``ambient_noise`` and
``samples_per_region`` set the over-fitting gap; ``region_class_shift`` and
``label_prior_concentration`` set how much regions disagree (the non-IID-ness).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GeneratorSpec:
    """Shape and difficulty of a generated federated feature dataset.

    A sample of region ``r`` with label ``y`` is

        z = class_separation * m_y + region_class_shift * c_{r,y}
            + region_shift * o_r + latent_noise * e            (in R^latent_dim)
        x = U z + ambient_shift * b_r + ambient_noise * n      (in R^num_features)

    with ``U`` a random orthonormal ``num_features x latent_dim`` basis (the
    "text-embedding" subspace carrying the class structure), ``m_y, c_{r,y}, o_r, e``
    standard normal in the subspace, ``b_r, n`` standard normal in the full space.
    Labels of region ``r`` follow a prior
    ``p_r ~ Dirichlet(label_prior_concentration)``.

    Attributes
    ----------
    name : str
        Run-config value of ``dataset``.
    num_features, num_classes : int
        Feature dimension (1024, as the papers' BERT features) and number of classes.
    num_regions : int
        The papers' number of regions (= clients); any ``num_partitions`` works,
        region ``i`` is partition ``i``.
    latent_dim : int
        Dimension of the class subspace.
    class_separation : float
        Scale of the class means; larger = easier (higher accuracy ceiling).
    latent_noise : float
        Within-class spread inside the subspace; larger = harder.
    ambient_noise : float
        Isotropic noise in all ``num_features`` dimensions; larger = harder, mostly
        through the finite-sample cost of 1024 noisy inputs.
    region_shift : float
        Covariate shift: per-region offset of all samples inside the subspace.
    region_class_shift : float
        Per-region perturbation of each class mean (a shift that per-client
        standardisation cannot remove; it costs the global model accuracy).
    ambient_shift : float
        Per-region offset in the full space (a "dialect" of the region).
    label_prior_concentration : float
        Dirichlet concentration of the per-region label prior; smaller = more skew.
    samples_per_region : int
        Samples each client region holds before its local train/test split.
    test_per_region : int
        Class-balanced global-test samples drawn from each client region.
    qv_pool_size : int
        Size of the held-out region's full QV pool (the papers' 1k); the working QV
        set is ``qv-size`` samples of it.
    """

    name: str
    num_features: int
    num_classes: int
    num_regions: int
    latent_dim: int
    class_separation: float
    latent_noise: float
    ambient_noise: float
    region_shift: float
    region_class_shift: float
    ambient_shift: float
    label_prior_concentration: float
    samples_per_region: int
    test_per_region: int
    qv_pool_size: int


YELP_STYLE = GeneratorSpec(
    name="yelp-style",
    num_features=1024,
    num_classes=2,
    num_regions=10,
    latent_dim=8,
    class_separation=4.0,
    latent_noise=2.2,
    ambient_noise=1.0,
    region_shift=1.0,
    region_class_shift=0.3,
    ambient_shift=0.3,
    label_prior_concentration=4.0,
    samples_per_region=500,
    test_per_region=100,
    qv_pool_size=1000,
)

HEALTHCARE_STYLE = GeneratorSpec(
    name="healthcare-style",
    num_features=1024,
    num_classes=10,
    num_regions=50,
    latent_dim=16,
    class_separation=6.0,
    latent_noise=2.2,
    ambient_noise=1.0,
    region_shift=1.0,
    region_class_shift=0.3,
    ambient_shift=0.3,
    label_prior_concentration=2.0,
    samples_per_region=400,
    test_per_region=40,
    qv_pool_size=1000,
)

GENERATED: dict[str, GeneratorSpec] = {
    spec.name: spec for spec in (YELP_STYLE, HEALTHCARE_STYLE)
}


@dataclass(frozen=True)
class EmbeddedSpec:
    """A real dataset shipped inside the package (``flwr_byz/data/embedded/``).

    Attributes
    ----------
    name : str
        Run-config value of ``dataset``.
    filename : str
        The data file in ``flwr_byz/data/embedded/`` (JSON, see
        :func:`flwr_byz.data.embedded_source.read_embedded`).
    num_samples, num_features, num_classes : int
        What the file holds (checked when it is read).
    natural_partitioning : str
        What ``partitioning = "natural"`` (the app's default) means for data with
        no region column: ``"dirichlet"`` or ``"iid"``.
    qv_pool_size : int
        Samples held out of the federation, before partitioning, as the server's
        QV pool (``qv-source = "held-out-sample"``); the working QV set is
        ``qv-size`` of them.
    """

    name: str
    filename: str
    num_samples: int
    num_features: int
    num_classes: int
    natural_partitioning: str
    qv_pool_size: int


#: UCI optical digits (writer-independent test set), 8x8 pixel counts 0..16; see
#: ``flwr_byz/data/embedded/README.md`` for source and licence.
DIGITS = EmbeddedSpec(
    name="digits",
    filename="digits.json",
    num_samples=1797,
    num_features=64,
    num_classes=10,
    # The 13 writers are not in the data: label skew stands in for the regions.
    natural_partitioning="dirichlet",
    qv_pool_size=180,  # 10 % of the pool, about 18 per class
)

EMBEDDED: dict[str, EmbeddedSpec] = {spec.name: spec for spec in (DIGITS,)}
