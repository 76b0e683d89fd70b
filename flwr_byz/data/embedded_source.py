"""Real datasets shipped inside the package: read offline, split like local files.

An embedded dataset (``dataset = "digits"``) is a JSON file in
``flwr_byz/data/embedded/`` (source, licence and encoding in the README.md and in
``make_digits.py`` there; JSON because a Flower App Bundle, which ``flwr run .``
ships and imports ``flwr_byz`` from, keeps no binary files). It goes
through the same pipeline as ``dataset = "files"``
(:class:`~flwr_byz.data.local_federation.LocalFederation`: seeded shuffle, then
flwr-datasets' ``IidPartitioner`` or ``DirichletPartitioner``), with one addition:
for ``qv-source = "held-out-sample"`` a seeded sample of
:attr:`~flwr_byz.data.spec.EmbeddedSpec.qv_pool_size` rows is taken out of the pool
*before* partitioning, so no client ever holds a QV sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np

from flwr_byz.data.config import DataConfig
from flwr_byz.data.files import arrays_table, table_dataset
from flwr_byz.data.partitioning import QV_SPLIT, TRAIN_SPLIT
from flwr_byz.data.seeding import EMBEDDED_QV_STREAM, rng_for
from flwr_byz.data.spec import EMBEDDED, EmbeddedSpec

#: Where the embedded files live (inside the installed package).
EMBEDDED_DIR = Path(__file__).with_name("embedded")


def _spec(name: str) -> EmbeddedSpec:
    if name not in EMBEDDED:
        raise ValueError(
            f"{name!r} is not an embedded dataset; allowed: "
            + ", ".join(repr(n) for n in EMBEDDED)
        )
    return EMBEDDED[name]


def embedded_path(name: str) -> Path:
    """The data file of embedded dataset ``name``."""
    return EMBEDDED_DIR / _spec(name).filename


def _base17(text: str) -> np.ndarray:
    """Digits ``0``-``9``, ``a``-``g`` as their values 0..16 (uint8); 255 if other."""
    codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    digit = codes - ord("0")
    letter = codes - ord("a") + 10
    values = np.where(digit < 10, digit, np.where(letter - 10 < 7, letter, 255))
    return values.astype(np.uint8)


def read_embedded(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole embedded dataset ``name`` as raw arrays, in the file's order.

    Parameters
    ----------
    name : str
        A key of :data:`~flwr_byz.data.spec.EMBEDDED`, e.g. ``"digits"``.

    Returns
    -------
    tuple of numpy.ndarray
        ``features`` ``(m, d)`` and ``label`` ``(m,)``, both uint8 (``digits``:
        pixel counts 0..16 and the digits 0..9), unstandardised.

    Raises
    ------
    ValueError
        If the file does not hold what :data:`~flwr_byz.data.spec.EMBEDDED` says
        (a truncated or replaced package file must not train on other data).
    """
    spec = _spec(name)
    path = embedded_path(name)
    doc = json.loads(path.read_text(encoding="ascii"))
    rows, labels = doc["features"], doc["label"]
    m, d = spec.num_samples, spec.num_features
    if len(rows) != m or len(labels) != m or any(len(r) != d for r in rows):
        raise ValueError(
            f"embedded dataset {name!r}: {path} does not hold {m} samples of {d} "
            "features; reinstall flwr-byz"
        )
    x = _base17("".join(rows)).reshape(m, d)
    y = _base17(labels)
    if int(x.max()) > 16 or int(y.max()) >= spec.num_classes:
        raise ValueError(
            f"embedded dataset {name!r}: {path} has characters outside its "
            "encoding; reinstall flwr-byz"
        )
    return x, y


def qv_holdout_indices(num_samples: int, pool_size: int, seed: int) -> np.ndarray:
    """Sorted indices of the rows held out as the QV pool (seeded by ``seed``)."""
    order = rng_for(seed, EMBEDDED_QV_STREAM).permutation(num_samples)
    return np.sort(order[:pool_size])


def embedded_splits(cfg: DataConfig) -> dict[str, datasets.Dataset]:
    """The embedded dataset as splits ``train`` (to partition) and maybe ``qv``.

    ``qv`` (the held-out QV pool) exists only for ``qv-source =
    "held-out-sample"``; with ``partition:<id>`` or ``file:<path>`` every row goes
    to the clients.
    """
    spec = _spec(cfg.dataset)
    x, y = read_embedded(spec.name)
    what = f"dataset {spec.name!r}"
    ds = table_dataset(arrays_table({"features": x, "label": y}, what), cfg, what)
    if cfg.qv_kind != "held-out-sample":
        return {TRAIN_SPLIT: ds}
    held = qv_holdout_indices(len(ds), spec.qv_pool_size, cfg.seed)
    rest = np.setdiff1d(np.arange(len(ds)), held)
    return {TRAIN_SPLIT: ds.select(rest), QV_SPLIT: ds.select(held)}
