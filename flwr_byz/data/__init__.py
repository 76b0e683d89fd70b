"""Federated datasets: generated Yelp/Healthcare-style features, embedded real data
(``digits``), local files, Hugging Face datasets, and the server's quasi-validation
(QV) set.

See :mod:`flwr_byz.data.config` for the run-config keys and
:class:`flwr_byz.data.spec.GeneratorSpec` for the generators' knobs.
"""

from flwr_byz.data.client_data import ClientData
from flwr_byz.data.config import DATA_DEFAULTS, QV_DISTRIBUTION, check_data_config
from flwr_byz.data.embedded_source import read_embedded
from flwr_byz.data.labeled_data import LabeledData
from flwr_byz.data.loaders import dataset_shape, load_partition, load_server_data
from flwr_byz.data.server_data import ServerData
from flwr_byz.data.spec import (
    DIGITS,
    EMBEDDED,
    GENERATED,
    HEALTHCARE_STYLE,
    YELP_STYLE,
    EmbeddedSpec,
    GeneratorSpec,
)

__all__ = [
    "DATA_DEFAULTS",
    "DIGITS",
    "EMBEDDED",
    "GENERATED",
    "HEALTHCARE_STYLE",
    "QV_DISTRIBUTION",
    "YELP_STYLE",
    "ClientData",
    "EmbeddedSpec",
    "GeneratorSpec",
    "LabeledData",
    "ServerData",
    "check_data_config",
    "dataset_shape",
    "load_partition",
    "load_server_data",
    "read_embedded",
]
