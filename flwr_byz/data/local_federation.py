"""FederatedDataset's pipeline for data already in memory (local files, tests)."""

from __future__ import annotations

import datasets
from flwr_datasets.partitioner import Partitioner

from flwr_byz.data.config import DataConfig
from flwr_byz.data.partitioning import TRAIN_SPLIT, hold_out_region, make_partitioner


class LocalFederation:
    """``flwr_datasets.FederatedDataset`` for a ``DatasetDict`` held in memory.

    Same steps in the same order: shuffle every split with the seed (skipped for
    natural partitioning, where the order within a region is the file's), the
    preprocessor (region hold-out), then the partitioner on split ``train``.

    Parameters
    ----------
    data : datasets.DatasetDict
        Splits; ``train`` is partitioned, others (``test``, ...) are whole.
    cfg : DataConfig
        Parsed data config.
    num_partitions : int
        Number of clients (ignored by natural partitioning, which has one
        partition per region).
    what : str
        Names the data in error messages.
    """

    def __init__(
        self,
        data: datasets.DatasetDict,
        cfg: DataConfig,
        num_partitions: int,
        what: str = "the data",
    ) -> None:
        if TRAIN_SPLIT not in data:
            raise ValueError(f"{what} has no split {TRAIN_SPLIT!r}: {list(data)}")
        if cfg.partitioning != "natural":
            data = datasets.DatasetDict(
                {
                    name: split.shuffle(seed=cfg.seed, keep_in_memory=True)
                    for name, split in data.items()
                }
            )
        self._data = hold_out_region(cfg, what)(data)
        self._partitioner: Partitioner = make_partitioner(cfg, num_partitions)
        self._partitioner.dataset = self._data[TRAIN_SPLIT]

    @property
    def partitioners(self) -> dict[str, Partitioner]:
        """The partitioner of split ``train`` (FederatedDataset's attribute)."""
        return {TRAIN_SPLIT: self._partitioner}

    def load_partition(
        self, partition_id: int, split: str | None = None
    ) -> datasets.Dataset:
        """Rows of partition ``partition_id`` of split ``train``."""
        return self._partitioner.load_partition(partition_id)

    def load_split(self, split: str) -> datasets.Dataset:
        """A whole split (``train`` after hold-out, ``qv``, ``test``, ...)."""
        if split not in self._data:
            raise ValueError(f"split {split!r} not present; splits: {list(self._data)}")
        return self._data[split]

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the available splits."""
        return tuple(self._data)
