"""Client and server views of the generated datasets."""

from __future__ import annotations

from flwr_byz.data.assemble import (
    check_dims,
    check_labels,
    client_view,
    draw_qv,
    standardised,
)
from flwr_byz.data.client_data import ClientData
from flwr_byz.data.config import DataConfig
from flwr_byz.data.generated import (
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

        x, y = read_labeled_file(cfg.qv_arg, cfg, "qv-source")
        check_dims(x, spec.num_features, f"qv-source file {cfg.qv_arg!r}")
        check_labels(y, spec.num_classes, f"qv-source file {cfg.qv_arg!r}")
        pool = standardised(x, y, cfg)
    qv = draw_qv(pool, cfg, f"{cfg.qv_kind}:{cfg.qv_arg}".rstrip(":"))
    return ServerData(
        qv=qv, test=test, num_features=spec.num_features, num_classes=spec.num_classes
    )
