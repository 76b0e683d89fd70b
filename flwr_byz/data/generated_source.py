"""Client and server views of the generated datasets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flwr_byz.data.assemble import (
    check_dims,
    check_labels,
    client_view,
    draw_qv,
    standardised,
)
from flwr_byz.data.client_data import ClientData
from flwr_byz.data.config import DataConfig, parse_data_config
from flwr_byz.data.generated import (
    HELD_OUT_REGION,
    generate_global_test,
    generate_qv_pool,
    generate_region,
)
from flwr_byz.data.server_data import ServerData
from flwr_byz.data.spec import GENERATED, GeneratorSpec


def _spec(cfg: DataConfig) -> GeneratorSpec:
    return GENERATED[cfg.dataset]


def samples_per_region(cfg: DataConfig) -> int:
    """``samples-per-region`` or the preset's default when it is 0."""
    return cfg.samples_per_region or _spec(cfg).samples_per_region


def generated_partition(
    cfg: DataConfig, partition_id: int, num_partitions: int
) -> ClientData:
    """Client ``partition_id``'s data: only its own region is generated."""
    spec = _spec(cfg)
    x, y = generate_region(spec, cfg.seed, partition_id, samples_per_region(cfg))
    return client_view(x, y, cfg, partition_id)


def generated_server_data(cfg: DataConfig, num_partitions: int) -> ServerData:
    """The held-out-region (or other) QV set and the global test set."""
    spec = _spec(cfg)
    x_test, y_test = generate_global_test(spec, cfg.seed, num_partitions)
    test = standardised(x_test, y_test, cfg)
    if cfg.qv_kind == "held-out-region":
        pool = standardised(*generate_qv_pool(spec, cfg.seed), cfg)
    elif cfg.qv_kind == "partition":
        pool = generated_partition(cfg, int(cfg.qv_arg), num_partitions).train
    else:  # "file": validated by the caller
        from flwr_byz.data.files import read_labeled_file

        what = f"qv-source file {cfg.qv_arg!r}"
        x, y = read_labeled_file(cfg.qv_arg, cfg, "qv-source")
        check_dims(x, spec.num_features, what)
        check_labels(y, spec.num_classes, what)
        pool = standardised(x, y, cfg, what)
    source = f"{cfg.qv_kind}:{cfg.qv_arg}".rstrip(":")
    qv = draw_qv(pool, cfg, source, spec.num_classes)
    return ServerData(
        qv=qv, test=test, num_features=spec.num_features, num_classes=spec.num_classes
    )


def generated_columns(
    cfg: Mapping[str, Any], num_partitions: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The raw generated federation as columns, for writing to files.

    Returns ``(data, test)``: ``data`` has ``features`` ``(m, 1024)`` float32,
    ``label`` and ``region`` (client regions ``0..num_partitions-1`` then the
    held-out QV region as ``num_partitions``, last in sorted order); ``test`` is the
    global test set. Loading ``data`` with ``dataset = "files"``, natural
    partitioning by ``region``, ``qv-source = "held-out-region"`` and ``test-path``
    pointing at ``test`` reproduces the generated partitions exactly.
    """
    parsed = parse_data_config(cfg)
    if not parsed.is_generated:
        raise ValueError(
            f"run config 'dataset' = {parsed.dataset!r} is invalid here; allowed: "
            + ", ".join(GENERATED)
        )
    spec = _spec(parsed)
    xs, ys, rs = [], [], []
    regions = [*range(num_partitions), HELD_OUT_REGION]
    for r in regions:
        n = spec.qv_pool_size if r == HELD_OUT_REGION else samples_per_region(parsed)
        x, y = generate_region(spec, parsed.seed, r, n)
        xs.append(x.numpy())
        ys.append(y.numpy())
        rs.append(np.full(n, num_partitions if r == HELD_OUT_REGION else r))
    x_test, y_test = generate_global_test(spec, parsed.seed, num_partitions)
    data = {
        "features": np.concatenate(xs),
        "label": np.concatenate(ys),
        "region": np.concatenate(rs),
    }
    return data, {"features": x_test.numpy(), "label": y_test.numpy()}
