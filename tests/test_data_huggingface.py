"""Hugging Face datasets through flwr-datasets, offline: datasets built in the test,
written to Parquet and loaded with FederatedDataset's "parquet" builder, or kept in
memory (LocalFederation runs the same pipeline)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from flwr_datasets.common import telemetry

from flwr_byz.data import dataset_shape, load_partition, load_server_data
from flwr_byz.data.columns import extract_features
from flwr_byz.data.config import parse_data_config
from flwr_byz.data.local_federation import LocalFederation
from flwr_byz.data.table_source import describe, federation_partition

CLASSES = 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # No telemetry requests and no writes to ~/.cache from these tests.
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))


def _images(n: int, shape: tuple[int, ...], seed: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        for _ in range(n)
    ]


def _mnist_like(
    n: int, seed: int, column: str = "image", shape=(8, 8)
) -> datasets.Dataset:
    rng = np.random.default_rng(seed + 100)
    features = datasets.Features(
        {column: datasets.Image(), "label": datasets.ClassLabel(num_classes=CLASSES)}
    )
    return datasets.Dataset.from_dict(
        {
            column: _images(n, shape, seed),
            "label": rng.integers(0, CLASSES, n).tolist(),
        },
        features=features,
    )


def _pixels(ds: datasets.Dataset, column: str = "image") -> torch.Tensor:
    arr = np.stack([np.asarray(im) for im in ds[column]]).astype(np.float64) / 255
    if arr.ndim == 4:
        arr = arr.transpose(0, 3, 1, 2)
    return torch.from_numpy(arr.reshape(len(arr), -1).astype(np.float32))


def _rowset(x: torch.Tensor) -> list[tuple]:
    return sorted(map(tuple, x.tolist()))


@pytest.fixture
def parquet_mnist(tmp_path) -> dict[str, Path]:
    train, test = _mnist_like(120, 0), _mnist_like(40, 1)
    paths = {"train": tmp_path / "train.parquet", "test": tmp_path / "test.parquet"}
    train.to_parquet(paths["train"])
    test.to_parquet(paths["test"])
    return paths


def _hf_cfg(paths: dict[str, Path], **kw) -> dict:
    return {
        "dataset": "parquet",
        "data-path": str(paths["train"]),
        "test-path": str(paths["test"]),
        "partitioning": "iid",
        "qv-source": "partition:0",
        "standardize": "none",
        **kw,
    }


def test_federated_dataset_path_images_to_tensors(parquet_mnist) -> None:
    cfg = _hf_cfg(parquet_mnist)
    assert dataset_shape(cfg) == (64, CLASSES)
    clients = [load_partition(cfg, i, 4) for i in range(4)]
    got = torch.cat([torch.cat([c.train.features, c.test.features]) for c in clients])
    train = datasets.Dataset.from_parquet(str(parquet_mnist["train"]))
    # IID partitions of the shuffled train split: every image exactly once, as
    # flattened pixels in [0, 1].
    assert _rowset(got) == _rowset(_pixels(train))
    assert got.min() >= 0 and got.max() <= 1
    server = load_server_data(cfg, 4)
    test = datasets.Dataset.from_parquet(str(parquet_mnist["test"]))
    assert _rowset(server.test.features) == _rowset(_pixels(test))
    assert server.qv.features.shape == (10, 64)
    assert (server.num_features, server.num_classes) == (64, CLASSES)


def test_in_memory_dataset_dict_partitions_like_federated_dataset(
    parquet_mnist,
) -> None:
    cfg = _hf_cfg(parquet_mnist, standardize="client", seed=7)
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_parquet(str(parquet_mnist["train"])),
            "test": datasets.Dataset.from_parquet(str(parquet_mnist["test"])),
        }
    )
    parsed = parse_data_config(cfg)
    local = LocalFederation(dd, parsed, 4)
    meta = describe(local, parsed)
    for pid in range(4):
        a = federation_partition(local, meta, parsed, pid, 4)
        b = load_partition(cfg, pid, 4)
        assert torch.equal(a.train.features, b.train.features)
        assert torch.equal(a.test.labels, b.test.labels)
        # standardised with the client's own statistics
        assert a.train.features.mean(0).abs().max() < 1e-5


def test_rgb_images_are_flattened_channel_first() -> None:
    ds = _mnist_like(5, 3, column="img", shape=(4, 5, 3))
    x = extract_features(ds, parse_data_config({}), "cifar-like")
    assert x.shape == (5, 3 * 4 * 5)
    first = np.asarray(ds[0]["img"]).astype(np.float64) / 255  # (H, W, C)
    assert torch.allclose(x[0, :20], torch.from_numpy(first[:, :, 0].ravel()).float())
    assert torch.allclose(x[0, 20:40], torch.from_numpy(first[:, :, 1].ravel()).float())


def test_natural_regions_and_held_out_region_through_federated_dataset(
    tmp_path,
) -> None:
    rng = np.random.default_rng(0)
    n = 90
    ds = datasets.Dataset.from_dict(
        {
            "emb": rng.normal(size=(n, 5)).tolist(),
            "label": rng.integers(0, 2, n).tolist(),
            "state": np.repeat(["AK", "AZ", "IL"], 30).tolist(),
        }
    )
    path = tmp_path / "states.parquet"
    ds.to_parquet(path)
    cfg = {
        "dataset": "parquet",
        "data-path": str(path),
        "partition-by": "state",
        "qv-source": "region:AK",
        "qv-size": 8,
        "standardize": "none",
    }
    clients = [load_partition(cfg, i, 2) for i in range(2)]
    server = load_server_data(cfg, 2)
    emb = torch.tensor(ds["emb"], dtype=torch.float32)
    ak, rest = _rowset(emb[:30]), _rowset(emb[30:])
    assert all(tuple(r) in set(ak) for r in server.qv.features.tolist())
    mine = [
        tuple(r)
        for c in clients
        for r in torch.cat([c.train.features, c.test.features]).tolist()
    ]
    assert sorted(mine) == rest  # AZ and IL are the clients, in sorted order
    assert len(server.test) == 12  # 20 % of each client region
    with pytest.raises(
        ValueError, match=r"'qv-source' = 'region:TX'.*'AK', 'AZ', 'IL'"
    ):
        load_partition({**cfg, "qv-source": "region:TX"}, 0, 2)


def test_missing_split_for_qv(parquet_mnist) -> None:
    cfg = _hf_cfg(parquet_mnist, **{"qv-source": "split:validation"})
    with pytest.raises(ValueError, match=r"'split:validation'.*no split 'validation'"):
        load_server_data(cfg, 4)


def test_unknown_hugging_face_name_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = {
        "dataset": "no-such-dataset-xyz",
        "partitioning": "iid",
        "qv-source": "partition:0",
    }
    with pytest.raises(
        ValueError, match=r"'dataset' = 'no-such-dataset-xyz'.*'yelp-style'"
    ):
        load_partition(cfg, 0, 2)


@pytest.mark.parametrize(
    ("typo", "meant"), [("yelp_style", "yelp-style"), ("file", "files")]
)
def test_typo_of_a_built_in_name_is_not_looked_up_online(typo, meant) -> None:
    from flwr_byz.data import check_data_config

    with pytest.raises(
        ValueError, match=rf"'dataset' = '{typo}'.*did you mean '{meant}'"
    ):
        check_data_config({"dataset": typo})
