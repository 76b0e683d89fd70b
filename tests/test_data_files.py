"""Local files (Parquet, CSV, .npz): round trip of generated data, partitioning
schemes, QV sources, per-client standardisation and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flwr_byz import data as byz_data
from flwr_byz.data.generated_source import generated_columns

# One worker runs this module under pytest-xdist: its module fixture is costly.
pytestmark = [
    pytest.mark.xdist_group("test_data_files"),
    pytest.mark.usefixtures("one_torch_thread"),
]

GEN = {"dataset": "yelp-style", "seed": 5, "samples-per-region": 40}
N = 3
FORMATS = ("npz", "parquet", "csv")


def _write(cols: dict[str, np.ndarray], path: Path) -> str:
    """Write columns: ``features`` as a list column (.npz/.parquet) or one CSV
    column per feature."""
    x = cols["features"]
    if path.suffix == ".npz":
        np.savez(path, **cols)
    elif path.suffix == ".parquet":
        table = {
            "features": pa.FixedSizeListArray.from_arrays(
                pa.array(x.ravel()), x.shape[1]
            )
        }
        table.update({k: pa.array(v) for k, v in cols.items() if k != "features"})
        pq.write_table(pa.table(table), path)
    else:
        df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
        for k, v in cols.items():
            if k != "features":
                df[k] = v
        df.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict[str, str]]:
    data, test = generated_columns(GEN, N)
    d = tmp_path_factory.mktemp("exported")
    return {
        ext: {
            "data-path": _write(data, d / f"data.{ext}"),
            "test-path": _write(test, d / f"test.{ext}"),
        }
        for ext in FORMATS
    }


def _same(a: byz_data.ClientData, b: byz_data.ClientData) -> bool:
    return all(
        torch.equal(getattr(a, s).features, getattr(b, s).features)
        and torch.equal(getattr(a, s).labels, getattr(b, s).labels)
        for s in ("train", "test")
    )


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_of_generated_data_gives_identical_partitions(exported, ext) -> None:
    cfg = {"dataset": "files", "seed": GEN["seed"], **exported[ext]}
    assert byz_data.dataset_shape(cfg) == (1024, 2)
    for pid in range(N):
        assert _same(
            byz_data.load_partition(cfg, pid, N), byz_data.load_partition(GEN, pid, N)
        ), pid
    got, want = byz_data.load_server_data(cfg, N), byz_data.load_server_data(GEN, N)
    assert torch.equal(got.qv.features, want.qv.features)
    assert torch.equal(got.qv.labels, want.qv.labels)
    assert torch.equal(got.test.features, want.test.features)
    assert torch.equal(got.test.labels, want.test.labels)
    assert (got.num_features, got.num_classes) == (1024, 2)


# --- a small hand-made table for the partitioning schemes and errors -------------


def _table(n_regions: int = 4, per_region: int = 30, d: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    m = n_regions * per_region
    y = rng.integers(0, 3, size=m)
    x = (
        rng.normal(size=(m, d))
        + y[:, None]
        + np.repeat(np.arange(n_regions), per_region)[:, None]
    )
    return {
        "features": x.astype(np.float32),
        "label": y,
        "region": np.repeat(np.array([f"r{i}" for i in range(n_regions)]), per_region),
    }


@pytest.fixture
def small(tmp_path) -> dict[str, str]:
    cols = _table()
    return {ext: _write(cols, tmp_path / f"small.{ext}") for ext in FORMATS}


def _files(path: str, **kw) -> dict:
    return {"dataset": "files", "data-path": path, **kw}


def test_natural_partitioning_holds_out_the_last_region(small) -> None:
    cfg = _files(small["parquet"], **{"test-fraction": 0.25})
    clients = [byz_data.load_partition(cfg, i, 3) for i in range(3)]
    for c in clients:  # 30 rows per region: 22 train + 8 test
        assert (len(c.train), len(c.test)) == (22, 8)
    server = byz_data.load_server_data(cfg, 3)
    assert len(server.qv) == 10 and len(server.test) == 24
    assert (server.num_features, server.num_classes) == (6, 3)
    # region r3 (rows 90..119) is the QV pool: its raw features are far from others
    held = byz_data.load_server_data(
        _files(small["parquet"], **{"qv-source": "region:r0"}), 3
    )
    assert not torch.equal(held.qv.features, server.qv.features)


def test_client_standardisation_uses_only_its_own_rows(tmp_path) -> None:
    cols = _table()
    a = _write(cols, tmp_path / "a.parquet")
    changed = {k: v.copy() for k, v in cols.items()}
    changed["features"][30:60] *= 100.0  # region r1 only
    b = _write(changed, tmp_path / "b.parquet")
    assert _same(
        byz_data.load_partition(_files(a), 0, 3),
        byz_data.load_partition(_files(b), 0, 3),
    )
    assert not _same(
        byz_data.load_partition(_files(a), 1, 3),
        byz_data.load_partition(_files(b), 1, 3),
    )
    train = byz_data.load_partition(_files(a), 2, 3).train.features
    assert train.mean(0).abs().max() < 1e-5
    assert (train.std(0, correction=0) - 1).abs().max() < 1e-4


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_iid_and_dirichlet_partitions_cover_the_data_once(small, scheme) -> None:
    cfg = _files(
        small["npz"],
        **{
            "partitioning": scheme,
            "qv-source": "partition:0",
            "test-fraction": 0.0,
            "standardize": "none",
            "dirichlet-alpha": 0.3,
            "seed": 2,
        },
    )
    rows = [byz_data.load_partition(cfg, i, 4).train for i in range(4)]
    x = torch.cat([r.features for r in rows])
    raw = torch.from_numpy(_table()["features"])
    assert len(x) == len(raw)
    # every original row exactly once
    keys = sorted(map(tuple, x.tolist()))
    assert keys == sorted(map(tuple, raw.tolist()))
    again = byz_data.load_partition(cfg, 1, 4).train
    assert torch.equal(again.features, rows[1].features)
    # qv drawn from partition 0's training data
    server_cfg = {**cfg, "test-fraction": 0.2}
    qv = byz_data.load_server_data(server_cfg, 4).qv
    pool = byz_data.load_partition(server_cfg, 0, 4).train.features
    assert all(any(torch.equal(q, p) for p in pool) for q in qv.features)


def test_dirichlet_is_more_label_skewed_than_iid(small) -> None:
    def skew(scheme: str) -> float:
        cfg = _files(
            small["npz"],
            **{
                "partitioning": scheme,
                "qv-source": "partition:0",
                "dirichlet-alpha": 0.1,
            },
        )
        shares = []
        for i in range(4):
            y = byz_data.load_partition(cfg, i, 4).train.labels
            shares.append(torch.bincount(y, minlength=3).float() / len(y))
        return torch.stack(shares).std(dim=0).mean().item()

    assert skew("dirichlet") > 2 * skew("iid")


def test_qv_from_a_file_and_scalar_csv_columns(tmp_path) -> None:
    cols = _table()
    data = _write(cols, tmp_path / "data.csv")
    qv = _write(_table(n_regions=1, per_region=12, seed=9), tmp_path / "qv.csv")
    cfg = _files(
        data, **{"qv-source": f"file:{qv}", "qv-size": 5, "partition-by": "region"}
    )
    # the region column is text; with a file QV source all 4 regions are clients
    server = byz_data.load_server_data(cfg, 4)
    assert server.qv.features.shape == (5, 6)
    assert len(byz_data.load_partition(cfg, 3, 4).train) == 24


def test_feature_columns_subset_and_string_labels(tmp_path) -> None:
    cols = _table()
    df = pd.DataFrame(cols["features"], columns=[f"f{i}" for i in range(6)])
    df["label"] = np.array(["neg", "neu", "pos"])[cols["label"]]
    df["region"] = cols["region"]
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    cfg = _files(str(path), **{"feature-columns": "f0, f2,f5"})
    assert byz_data.dataset_shape(cfg) == (3, 3)
    c = byz_data.load_partition(cfg, 0, 3)
    assert c.train.features.shape[1] == 3
    want = torch.from_numpy(cols["label"][:30])  # sorted names = 0, 1, 2
    assert sorted(torch.cat([c.train.labels, c.test.labels]).tolist()) == sorted(
        want.tolist()
    )


# --- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({"partitioning": "random"}, ["'partitioning'", "natural", "iid", "dirichlet"]),
        (
            {"qv-source": "somewhere"},
            ["'qv-source'", "held-out-region", "partition:<id>"],
        ),
        ({"qv-source": "partition:x"}, ["'qv-source'", "partition:<id>"]),
        ({"dataset": "files"}, ["'data-path'", ".parquet"]),
        ({"dataset": "files", "data-path": "x.txt"}, ["'data-path'", ".csv", ".npz"]),
        (
            {"dataset": "yelp-style", "partitioning": "iid"},
            ["'partitioning'", "natural"],
        ),
        ({"dataset": ""}, ["'dataset'", "yelp-style", "healthcare-style", "files"]),
        ({"dirichlet-alpha": 0}, ["'dirichlet-alpha'", "> 0"]),
        ({"test-fraction": 1.0}, ["'test-fraction'", "[0, 1)"]),
        ({"qv-size": 0}, ["'qv-size'", ">= 1"]),
        ({"seed": -1}, ["'seed'", ">= 0"]),
        ({"standardize": "global"}, ["'standardize'", "client", "none"]),
        (
            {"dataset": "files", "data-path": "a.csv", "partitioning": "iid"},
            ["'qv-source'", "partition:<id>", "file:<path>"],
        ),
        ({"qv-source": "split:validation"}, ["'qv-source'", "Hugging Face"]),
    ],
)
def test_bad_config_values_are_named(cfg, words) -> None:
    with pytest.raises(ValueError) as err:
        byz_data.check_data_config(cfg)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_missing_columns_are_named(small) -> None:
    path = small["parquet"]
    with pytest.raises(
        ValueError, match=r"'label-column' = 'stars'.*available columns"
    ):
        byz_data.load_partition(_files(path, **{"label-column": "stars"}), 0, 3)
    with pytest.raises(
        ValueError, match=r"'partition-by' = 'state'.*available columns"
    ):
        byz_data.load_partition(_files(path, **{"partition-by": "state"}), 0, 3)
    with pytest.raises(ValueError, match=r"'feature-columns' = 'f0,f9'.*available"):
        byz_data.load_partition(
            _files(small["csv"], **{"feature-columns": "f0,f9"}), 0, 3
        )
    with pytest.raises(ValueError, match=r"'data-path' = .*no such file"):
        byz_data.load_partition(_files(path + ".missing.csv"), 0, 3)


def test_region_with_too_few_samples(tmp_path) -> None:
    cols = _table()
    keep = np.r_[0:30, 30:32, 60:120]  # region r1 keeps 2 rows
    path = _write({k: v[keep] for k, v in cols.items()}, tmp_path / "few.npz")
    with pytest.raises(ValueError, match=r"partition 1 \(region 'r1'\) has 2 samples"):
        byz_data.load_partition(_files(path), 1, 3)
    with pytest.raises(ValueError, match=r"has 2 samples"):
        byz_data.load_server_data(
            _files(path), 3
        )  # the global test set needs every region


def test_qv_region_smaller_than_qv_size(small) -> None:
    with pytest.raises(ValueError, match=r"fewer than qv-size 50"):
        byz_data.load_server_data(_files(small["npz"], **{"qv-size": 50}), 3)


def test_region_count_must_match_federation(small) -> None:
    with pytest.raises(
        ValueError, match=r"'partition-by'.*3 client regions.*5 partitions"
    ):
        byz_data.load_partition(_files(small["npz"]), 0, 5)


def test_nan_features(tmp_path) -> None:
    cols = _table()
    cols["features"][35, 2] = np.nan
    path = _write(cols, tmp_path / "nan.csv")
    byz_data.load_partition(_files(path), 0, 3)  # other clients are unaffected
    with pytest.raises(ValueError, match=r"partition 1 \(region 'r1'\) has NaN"):
        byz_data.load_partition(_files(path), 1, 3)


def test_mismatched_dimensions(tmp_path) -> None:
    data = _write(_table(), tmp_path / "data.npz")
    qv = _write(_table(n_regions=1, d=5), tmp_path / "qv.npz")
    with pytest.raises(ValueError, match=r"has 5 features but the dataset has 6"):
        byz_data.load_server_data(_files(data, **{"qv-source": f"file:{qv}"}), 4)
    with pytest.raises(ValueError, match=r"has 5 features but the dataset has 1024"):
        byz_data.load_server_data(
            {"dataset": "yelp-style", "qv-source": f"file:{qv}"}, 2
        )
    ragged = pa.table(
        {
            "features": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]] * 10),
            "label": pa.array([0, 1] * 10),
            "region": pa.array(["a"] * 10 + ["b"] * 10),
        }
    )
    path = tmp_path / "ragged.parquet"
    pq.write_table(ragged, path)
    with pytest.raises(ValueError, match=r"different lengths.*mismatched dimensions"):
        byz_data.load_partition(_files(str(path), **{"qv-source": "partition:0"}), 0, 2)


def test_labels_out_of_range_in_qv_file(tmp_path) -> None:
    data = _write(_table(), tmp_path / "data.npz")
    bad = _table(n_regions=1)
    bad["label"] = bad["label"] + 5
    qv = _write(bad, tmp_path / "qv.npz")
    with pytest.raises(ValueError, match=r"labels in \[5, 7\] but the dataset has 3"):
        byz_data.load_server_data(_files(data, **{"qv-source": f"file:{qv}"}), 4)


def test_partition_id_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"partition_id 10 out of range \[0, 10\)"):
        byz_data.load_partition({}, 10, 10)
    with pytest.raises(
        ValueError, match=r"'qv-source' = 'partition:7'.*num_partitions"
    ):
        byz_data.load_server_data({"qv-source": "partition:7"}, 5)


@pytest.mark.parametrize("suffix", [".npz", ".parquet", ".csv"])
def test_unreadable_file_names_the_key_and_how_to_write_one(tmp_path, suffix) -> None:
    path = tmp_path / f"junk{suffix}"
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x00\xff" + raw if suffix == ".csv" else raw)
    with pytest.raises(ValueError) as info:
        byz_data.load_partition(_files(str(path)), 0, 3)
    message = str(info.value)
    assert "'data-path'" in message and "junk" in message
    assert "allow_pickle" not in message and "write it with" in message


def test_a_text_cell_in_a_feature_column_is_refused_not_dropped(tmp_path) -> None:
    cols = _table()
    frame = pd.DataFrame(cols["features"], columns=[f"f{i}" for i in range(6)])
    frame["f3"] = frame["f3"].astype(object)
    frame.loc[7, "f3"] = "abc"
    frame["label"], frame["region"] = cols["label"], cols["region"]
    path = tmp_path / "text.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"\['f3'\] are not numeric"):
        byz_data.load_partition(_files(str(path)), 0, 3)
    # Naming the features explicitly leaves no doubt, and the text cell is named.
    with pytest.raises(ValueError, match="f3"):
        byz_data.load_partition(
            _files(str(path), **{"feature-columns": "f0,f1,f2,f3"}), 0, 3
        )


def test_huge_integer_labels_are_refused_before_any_allocation(tmp_path) -> None:
    cols = _table()
    cols["label"] = cols["label"].astype(np.int64) * 10**12
    path = _write(cols, tmp_path / "huge.npz")
    with pytest.raises(ValueError, match=r"at most 100000.*renumber"):
        byz_data.load_partition(_files(path), 0, 3)


def test_a_bad_test_file_is_named_as_the_test_path(tmp_path) -> None:
    data = _write(_table(), tmp_path / "data.npz")
    test = _write(_table(n_regions=1, d=5), tmp_path / "test.npz")
    with pytest.raises(ValueError, match=r"test-path file .*test\.npz.* 5 features"):
        byz_data.load_server_data(_files(data, **{"test-path": test}), 3)


@pytest.mark.parametrize("labels", ["zeros", "one-string"])
def test_a_one_class_data_file_is_refused_naming_the_key(tmp_path, labels) -> None:
    cols = _table()
    cols["label"] = (
        np.zeros(len(cols["label"]), dtype=np.int64)
        if labels == "zeros"
        else np.array(["cat"] * len(cols["label"]))
    )
    path = _write(cols, tmp_path / "one.npz")
    with pytest.raises(ValueError) as info:
        byz_data.dataset_shape(_files(path))
    message = str(info.value)
    for words in (f"'data-path' = {path!r}", "1 class", "at least 2", "'label-column'"):
        assert words in message, message


def test_a_one_class_data_file_stops_the_run_before_round_one(tmp_path) -> None:
    """The real ServerApp ``run`` on an in-process grid: the data's single class
    is named before anything is written (not the model's raw refusal)."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from link_federation import LinkFederation

    from flwr_byz.app.config import check_run_config
    from flwr_byz.app.server_run import run_server

    cols = _table()
    cols["label"] = np.zeros(len(cols["label"]), dtype=np.int64)
    path = _write(cols, tmp_path / "one.npz")
    out = tmp_path / "out"
    cfg = check_run_config(
        {**_files(path), "output-dir": str(out), "node-wait-timeout": 5.0}
    )

    def identity(ins: Message) -> Message:
        pid = {"partition-id": ins.metadata.dst_node_id % 3, "num-partitions": 3}
        return Message(RecordDict({"identity": ConfigRecord(pid)}), reply_to=ins)

    with LinkFederation(3, identity) as fed, pytest.raises(ValueError) as info:
        run_server(fed.grid, cfg)
    assert "'data-path'" in str(info.value) and "at least 2" in str(info.value)
    assert not (out / "results.json").exists()


def test_a_node_may_hold_a_single_class(tmp_path) -> None:
    """A deployment node's own file with one class is ordinary (label skew)."""
    from flwr_byz.app.client_data import load_client_data

    cols = _table(n_regions=1)
    cols["label"] = np.full(len(cols["label"]), 2, dtype=np.int64)
    node = _write(cols, tmp_path / "node.npz")
    data = load_client_data({"dataset": "yelp-style"}, {"data-path": node})
    assert set(data.train.labels.tolist()) == {2}


def test_a_node_file_of_the_wrong_dimension_is_named(tmp_path) -> None:
    """The real ClientApp gets the server's model for 6 features; the node's own
    file (node config ``data-path``) has 5: the reply names the key and the two
    dimensions instead of torch's raw ``size mismatch``."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict
    from message_helpers import delivered, node_context

    from clients.client_app import app as client_app
    from flwr_byz.app import client_run
    from flwr_byz.models import build_model

    node = _write(_table(n_regions=1, d=5), tmp_path / "node.npz")
    model = build_model("auto", 6, 3, seed=0)
    msg = delivered(
        RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "config": ConfigRecord({"server-round": 1, "num-classes": 3}),
            }
        )
    )
    ctx = node_context(
        {"data-path": node}, {"dataset": "files", "data-path": "server-side.npz"}
    )
    client_run.clear_caches()
    try:
        with pytest.raises(ValueError) as info:
            client_app(msg, ctx)
    finally:
        client_run.clear_caches()
    message = str(info.value)
    first = next(iter(model.state_dict().values())).shape  # (hidden, 6)
    for words in (
        f"node config 'data-path' = {node!r}",
        "has 5 features",
        f"shape {tuple(first)}",
    ):
        assert words in message, message
