"""Byzantine-robust aggregation rules as pure functions of an ``(n, d)`` torch tensor.

Each rule takes the matrix of the ``n`` valid updates (rows) on any device and returns
an :class:`AggregationResult`: the aggregate (same dtype and device) and what the rule
decided, by row index. No Flower import: the strategy layer maps rows to node ids.

Rules needing pairwise distances compute them from one centred Gram product
(:func:`pairwise_sq_distances`); FABA and the geometric median then run entirely on the
``n × n`` Gram matrix and read the update matrix only once more, to form the result.

FLTrust and Zeno also use the server's own data: FLTrust takes the server's update,
Zeno a loss function on the server's batch (``flwr_byz.strategy`` builds both).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr_byz.aggregation.bounds import byzantine_budget
from flwr_byz.aggregation.brute_force import brute_force
from flwr_byz.aggregation.bulyan import bulyan
from flwr_byz.aggregation.coordinatewise import coordinate_median, trimmed_mean
from flwr_byz.aggregation.distances import pairwise_sq_distances
from flwr_byz.aggregation.faba import faba
from flwr_byz.aggregation.fltrust import fltrust
from flwr_byz.aggregation.geomed import geomed_medoid, geometric_median
from flwr_byz.aggregation.krum import krum, multikrum
from flwr_byz.aggregation.mean import mean
from flwr_byz.aggregation.registry import REGISTRY, min_nodes
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.zeno import zeno

RULES: dict[str, Callable[..., AggregationResult]] = {
    rule.name: rule.function for rule in REGISTRY
}
"""Run-config rule name -> function. Signatures differ (see each function)."""

__all__ = [
    "RULES",
    "AggregationResult",
    "brute_force",
    "bulyan",
    "byzantine_budget",
    "coordinate_median",
    "faba",
    "fltrust",
    "geomed_medoid",
    "geometric_median",
    "krum",
    "mean",
    "min_nodes",
    "multikrum",
    "pairwise_sq_distances",
    "trimmed_mean",
    "zeno",
]
