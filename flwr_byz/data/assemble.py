"""Turn raw samples into the standardised client and server views."""

from __future__ import annotations

import torch

from flwr_byz.data.client_data import ClientData
from flwr_byz.data.config import DataConfig
from flwr_byz.data.labeled_data import LabeledData
from flwr_byz.data.splitting import qv_indices, train_test_indices, wrong_labels
from flwr_byz.data.standardise import feature_stats, standardise


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ValueError if ``x`` (features of ``what``) holds NaN or infinity."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"{what} has NaN/infinite feature values (first bad rows: {rows}); "
            "clean or impute them before loading"
        )


def _stats(x: torch.Tensor, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.standardize == "none":
        return torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    return feature_stats(x)


def client_view(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DataConfig,
    partition_id: int,
    what: str = "",
) -> ClientData:
    """Split one partition's raw samples and standardise with its train statistics."""
    what = what or f"partition {partition_id}"
    check_finite(x, what)
    train_idx, test_idx = train_test_indices(
        len(y), cfg.test_fraction, cfg.seed, partition_id, what
    )
    tr = torch.from_numpy(train_idx)
    te = torch.from_numpy(test_idx)
    stats = _stats(x[tr], cfg)
    return ClientData(
        train=LabeledData(standardise(x[tr], stats), y[tr].clone()),
        test=LabeledData(standardise(x[te], stats), y[te].clone()),
    )


def standardised(
    x: torch.Tensor, y: torch.Tensor, cfg: DataConfig, what: str = "server data"
) -> LabeledData:
    """``(x, y)`` standardised with its own statistics (a server-side set)."""
    check_finite(x, what)
    return LabeledData(standardise(x, _stats(x, cfg)), y.clone())


def draw_qv(
    pool: LabeledData, cfg: DataConfig, source: str, num_classes: int
) -> LabeledData:
    """The working QV set: ``qv-size`` samples of an already standardised pool,
    skewed by ``qv-class-shares`` and with ``qv-label-noise`` of its labels wrong
    when those keys ask for it."""
    labels = pool.labels.numpy()
    if len(cfg.qv_class_shares) > num_classes:
        raise ValueError(
            f"run config 'qv-class-shares' has {len(cfg.qv_class_shares)} shares "
            f"but the dataset has {num_classes} classes; give at most one per class"
        )
    idx = qv_indices(labels, cfg.qv_size, cfg.seed, source, cfg.qv_class_shares)
    y = wrong_labels(labels[idx], cfg.qv_label_noise, num_classes, cfg.seed)
    picked = torch.from_numpy(idx)
    return LabeledData(
        pool.features[picked].clone(), torch.from_numpy(y).to(pool.labels.dtype)
    )


def check_dims(x: torch.Tensor, num_features: int, what: str) -> None:
    """Raise ValueError if ``x`` does not have ``num_features`` columns."""
    if x.shape[1] != num_features:
        raise ValueError(
            f"{what} has {x.shape[1]} features but the dataset has {num_features}; "
            "dimensions must match"
        )


def check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    """Raise ValueError if a label of ``what`` is outside ``[0, num_classes)``."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{what} has labels in [{int(y.min())}, {int(y.max())}] but the dataset "
            f"has {num_classes} classes (labels 0..{num_classes - 1})"
        )
