"""The data run-config keys: defaults, parsing and validation.

Keys (Flower kebab-case, ``[tool.flwr.app.config]``); a missing key takes its value
from :data:`DATA_DEFAULTS`:

``dataset``
    ``"yelp-style"`` | ``"healthcare-style"`` (generated, no download) |
    ``"digits"`` (embedded real data, no download: UCI handwritten digits, 1,797
    samples, 64 features, 10 classes) | ``"files"`` (local Parquet/CSV/.npz at
    ``data-path``) | any other string = a Hugging Face dataset name loaded through
    ``flwr_datasets.FederatedDataset`` (e.g. ``"mnist"``, ``"uoft-cs/cifar10"``).
``data-path``
    ``files``: the data file (``.parquet``, ``.csv``, ``.npz``). Required for ``files``.
    Hugging Face: optional, passed as ``data_files={"train": data-path}`` (for the
    packaged builders ``"parquet"``, ``"csv"``, ``"json"``, ``"imagefolder"``).
    Embedded datasets: must be empty.
``test-path``
    Optional global test file (``files``, embedded datasets; Hugging Face:
    ``data_files["test"]``); ``""`` = the ``test`` split of a Hugging Face dataset
    if it has one, else the union of every partition's ``test-fraction`` (the
    papers' "removed a fraction of data samples from each worker to form the test
    set").
``label-column``
    Integer label column (labels must be ``0..C-1``).
``feature-columns``
    Comma-separated feature columns; ``""`` = automatic: the one list/array or image
    column if there is one, else every numeric column except label and region.
``partition-by``
    Region column for ``partitioning = "natural"`` (one partition per region value,
    in sorted order, ``flwr_datasets`` ``NaturalIdPartitioner``).
``partitioning``
    ``"natural"`` | ``"iid"`` | ``"dirichlet"`` (``DirichletPartitioner`` on the label
    column with ``dirichlet-alpha``). Generated datasets are always ``"natural"``:
    region ``i`` is partition ``i``. Embedded datasets have no region column:
    ``"natural"`` is their own default split, ``"dirichlet"`` for ``digits``.
``dirichlet-alpha``
    Concentration for ``"dirichlet"`` (> 0; smaller = more label skew).
``qv-source``
    ``"held-out-region"`` (generated: the held-out region no client has; files/HF
    with natural partitioning: the last region in sorted order is held out of the
    federation) | ``"region:<value>"`` (that region is held out) |
    ``"file:<path>"`` (a file with the same columns) | ``"partition:<id>"``
    (``qv-size`` samples of that client's training data, the papers' MNIST/CIFAR
    setting) | ``"split:<name>"`` (Hugging Face: a split such as ``validation``) |
    ``"held-out-sample"`` (embedded datasets: a seeded sample of the pool held out
    before partitioning, never given to a client; for them ``"held-out-region"``,
    the default, means this).
``qv-size``
    Working QV-set size (papers: < 10), drawn without replacement from the source.
``qv-class-shares``
    ``""`` (default): the QV set is as class-balanced as the source allows |
    comma-separated weights, one per class from class 0 (``"0.9,0.1"``: 9 of 10
    samples of class 0), to study a skewed QV set.
``qv-label-noise``
    Share of the QV samples whose label is replaced by a different, seeded random
    class (0 <= share < 1; default 0), to study a partly wrong QV set.
``test-fraction``
    Share of each partition kept as that client's local test split (0 <= f < 1).
``samples-per-region``
    Generated datasets: samples per client region before the test split
    (``0`` = the preset's: 500 Yelp-style, 400 Healthcare-style).
``standardize``
    ``"client"`` (per-feature mean/std of each party's own training data) |
    ``"none"``.
``seed``
    Non-negative int; same seed, same data.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr_byz.data.spec import EMBEDDED, GENERATED

DATA_DEFAULTS: dict[str, Any] = {
    "dataset": "yelp-style",
    "data-path": "",
    "test-path": "",
    "label-column": "label",
    "feature-columns": "",
    "partition-by": "region",
    "partitioning": "natural",
    "dirichlet-alpha": 0.5,
    "qv-source": "held-out-region",
    "qv-size": 10,
    "qv-class-shares": "",
    "qv-label-noise": 0.0,
    "test-fraction": 0.2,
    "samples-per-region": 0,
    "standardize": "client",
    "seed": 0,
}

#: The QV keys that make the server's QV set imperfect, at their neutral values:
#: what an attacker who samples the QV *distribution* draws from.
QV_DISTRIBUTION = {"qv-class-shares": "", "qv-label-noise": 0.0}

PARTITIONINGS = ("natural", "iid", "dirichlet")
STANDARDIZE = ("client", "none")
QV_SOURCES = (
    "held-out-region",
    "held-out-sample",
    "region:<value>",
    "file:<path>",
    "partition:<id>",
    "split:<name>",
)
FILE_SUFFIXES = (".parquet", ".csv", ".npz")
DATASET_KINDS = (*GENERATED, *EMBEDDED, "files", "<hugging-face-name>")
#: The QV sources an embedded dataset accepts (it has no regions and no splits).
EMBEDDED_QV_SOURCES = (
    "held-out-sample",
    "held-out-region",
    "file:<path>",
    "partition:<id>",
)


@dataclass(frozen=True)
class DataConfig:
    """The data keys of a run config, parsed and validated (see module docstring)."""

    dataset: str
    data_path: str
    test_path: str
    label_column: str
    feature_columns: tuple[str, ...]
    partition_by: str
    partitioning: str
    dirichlet_alpha: float
    qv_kind: str
    qv_arg: str
    qv_size: int
    qv_class_shares: tuple[float, ...]
    qv_label_noise: float
    test_fraction: float
    samples_per_region: int
    standardize: str
    seed: int

    @property
    def is_generated(self) -> bool:
        """Whether ``dataset`` names a built-in generator."""
        return self.dataset in GENERATED

    @property
    def is_files(self) -> bool:
        """Whether ``dataset`` is ``"files"``."""
        return self.dataset == "files"

    @property
    def is_embedded(self) -> bool:
        """Whether ``dataset`` names a data file shipped in the package."""
        return self.dataset in EMBEDDED


def _bad(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"run config '{key}' = {value!r} is invalid; allowed: {allowed}")


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg.get(key, DATA_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"an integer >= {minimum}")
    return value


def _float(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg.get(key, DATA_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, value, "a number")
    return float(value)


def _str(cfg: Mapping[str, Any], key: str) -> str:
    value = cfg.get(key, DATA_DEFAULTS[key])
    if not isinstance(value, str):
        raise _bad(key, value, "a string")
    return value.strip()


def _parse_shares(value: str) -> tuple[float, ...]:
    allowed = "'' (balanced) or comma-separated numbers >= 0, one per class from "
    allowed += "class 0, with a positive sum, e.g. '0.9,0.1'"
    if not value:
        return ()
    try:
        shares = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise _bad("qv-class-shares", value, allowed) from None
    if any(not (s >= 0 and s < float("inf")) for s in shares) or not sum(shares) > 0:
        raise _bad("qv-class-shares", value, allowed)
    return shares


def _parse_qv(value: str, cfg_partitioning: str, dataset: str) -> tuple[str, str]:
    allowed = " | ".join(f"'{s}'" for s in QV_SOURCES)
    if dataset in EMBEDDED:
        allowed = (
            " | ".join(f"'{s}'" for s in EMBEDDED_QV_SOURCES)
            + f" for the embedded dataset {dataset!r} (it has no regions or splits; "
            "'held-out-region' means 'held-out-sample' here)"
        )
        if value in ("held-out-sample", "held-out-region"):
            # The app's default QV source must work for `dataset = "digits"` alone:
            # the nearest thing to "a region no client has" is a sample no client has.
            return "held-out-sample", ""
    kind, sep, arg = value.partition(":")
    if value == "held-out-region":
        return kind, ""
    if value == "held-out-sample":
        raise _bad(
            "qv-source",
            value,
            "'held-out-sample' only for the embedded dataset(s) "
            + ", ".join(repr(d) for d in EMBEDDED),
        )
    if kind not in ("region", "file", "partition", "split") or not sep or not arg:
        raise _bad("qv-source", value, allowed)
    if dataset in EMBEDDED and kind not in ("file", "partition"):
        raise _bad("qv-source", value, allowed)
    if kind == "partition" and not (arg.isdigit()):
        raise _bad("qv-source", value, "'partition:<id>' with a non-negative int id")
    if kind == "region" and (dataset in GENERATED or cfg_partitioning != "natural"):
        raise _bad(
            "qv-source",
            value,
            "'region:<value>' only for dataset 'files' or a Hugging Face name with "
            "partitioning 'natural'",
        )
    if kind == "split" and (dataset in GENERATED or dataset == "files"):
        raise _bad("qv-source", value, "'split:<name>' only for Hugging Face datasets")
    return kind, arg


def parse_data_config(cfg: Mapping[str, Any]) -> DataConfig:
    """Parse and validate the data keys of ``cfg`` (missing keys take defaults).

    Raises
    ------
    ValueError
        Naming the key, the bad value and the allowed values.
    """
    dataset = _str(cfg, "dataset")
    kinds = " | ".join(f"'{d}'" for d in DATASET_KINDS)
    if not dataset:
        raise _bad("dataset", dataset, kinds)
    builtin = [*GENERATED, *EMBEDDED, "files"]
    near = difflib.get_close_matches(dataset, builtin, n=1, cutoff=0.75)
    if near and near[0] != dataset:
        # A typo of a built-in name would otherwise be looked up on the Hub.
        raise _bad("dataset", dataset, f"{kinds} (did you mean {near[0]!r}?)")
    partitioning = _str(cfg, "partitioning")
    if partitioning not in PARTITIONINGS:
        raise _bad("partitioning", partitioning, " | ".join(PARTITIONINGS))
    if dataset in GENERATED and partitioning != "natural":
        raise _bad(
            "partitioning",
            partitioning,
            f"'natural' for the generated dataset '{dataset}' (region i = partition i)",
        )
    if dataset in EMBEDDED and partitioning == "natural":
        # No region column: "natural" (the app's default) is the dataset's own split.
        partitioning = EMBEDDED[dataset].natural_partitioning
    data_path = _str(cfg, "data-path")
    test_path = _str(cfg, "test-path")
    if dataset == "files" and not data_path:
        raise _bad(
            "data-path", data_path, "a path ending in " + ", ".join(FILE_SUFFIXES)
        )
    if dataset in EMBEDDED and data_path:
        raise _bad(
            "data-path",
            data_path,
            f"'' for the embedded dataset {dataset!r} (its data ships with flwr-byz); "
            "for your own file use dataset 'files'",
        )
    if dataset == "files" or dataset in EMBEDDED:
        for key, path in (("data-path", data_path), ("test-path", test_path)):
            if path and not path.lower().endswith(FILE_SUFFIXES):
                raise _bad(key, path, "a path ending in " + ", ".join(FILE_SUFFIXES))
    alpha = _float(cfg, "dirichlet-alpha")
    if not alpha > 0:
        raise _bad("dirichlet-alpha", alpha, "a number > 0")
    test_fraction = _float(cfg, "test-fraction")
    if not 0.0 <= test_fraction < 1.0:
        raise _bad("test-fraction", test_fraction, "a number in [0, 1)")
    standardize = _str(cfg, "standardize")
    if standardize not in STANDARDIZE:
        raise _bad("standardize", standardize, " | ".join(STANDARDIZE))
    qv_kind, qv_arg = _parse_qv(_str(cfg, "qv-source"), partitioning, dataset)
    if (
        qv_kind == "held-out-region"
        and dataset not in GENERATED
        and partitioning != "natural"
    ):
        raise _bad(
            "qv-source",
            "held-out-region",
            "'file:<path>', 'partition:<id>' or 'split:<name>' when "
            f"partitioning is '{partitioning}' (there are no regions to hold out)",
        )
    feature_columns = tuple(
        c.strip() for c in _str(cfg, "feature-columns").split(",") if c.strip()
    )
    label_noise = _float(cfg, "qv-label-noise")
    if not 0.0 <= label_noise < 1.0:
        raise _bad("qv-label-noise", label_noise, "a number in [0, 1)")
    return DataConfig(
        dataset=dataset,
        data_path=data_path,
        test_path=test_path,
        label_column=_str(cfg, "label-column"),
        feature_columns=feature_columns,
        partition_by=_str(cfg, "partition-by"),
        partitioning=partitioning,
        dirichlet_alpha=alpha,
        qv_kind=qv_kind,
        qv_arg=qv_arg,
        qv_size=_int(cfg, "qv-size", 1),
        qv_class_shares=_parse_shares(_str(cfg, "qv-class-shares")),
        qv_label_noise=label_noise,
        test_fraction=test_fraction,
        samples_per_region=_int(cfg, "samples-per-region", 0),
        standardize=standardize,
        seed=_int(cfg, "seed", 0),
    )


def check_data_config(cfg: Mapping[str, Any]) -> None:
    """Validate the data keys of a run config without loading any data.

    Raises
    ------
    ValueError
        Naming the key, the bad value and the allowed values.
    """
    parse_data_config(cfg)
