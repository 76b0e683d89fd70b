"""Hugging Face datasets by name, through ``flwr_datasets.FederatedDataset``.

``dataset = "mnist"`` (or ``"uoft-cs/cifar10"``, or any Hub name) downloads once
into the usual Hugging Face cache; the ``train`` split is partitioned as
configured, the ``test`` split (when present) is the server's global test set,
images become flattened channel-first float features in [0, 1] (see
:mod:`flwr_byz.data.columns`). Natural partitioning needs a region-like column
(``partition-by``); for MNIST/CIFAR use ``partitioning = "iid"`` or
``"dirichlet"`` with ``qv-source = "partition:<id>"`` (the papers' "random
mini-batch of training samples").
"""

from __future__ import annotations

from typing import Any

from flwr_datasets import FederatedDataset

from flwr_byz.data.config import DataConfig
from flwr_byz.data.partitioning import TRAIN_SPLIT, hold_out_region, make_partitioner


def hub_federation(
    cfg: DataConfig, num_partitions: int, **load_dataset_kwargs: Any
) -> FederatedDataset:
    """A FederatedDataset for ``cfg.dataset`` with flwr-byz's partitioning and QV.

    Parameters
    ----------
    cfg : DataConfig
        Parsed data config (``dataset`` is the Hub name).
    num_partitions : int
        Number of clients.
    **load_dataset_kwargs
        Passed to ``datasets.load_dataset`` (e.g. ``data_files``, ``cache_dir``).
    """
    return FederatedDataset(
        dataset=cfg.dataset,
        partitioners={TRAIN_SPLIT: make_partitioner(cfg, num_partitions)},
        preprocessor=hold_out_region(cfg, f"dataset {cfg.dataset!r}"),
        # Natural partitions keep the data's order within a region (like files).
        shuffle=cfg.partitioning != "natural",
        seed=cfg.seed,
        **load_dataset_kwargs,
    )
