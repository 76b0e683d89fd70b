"""FABA: Fast Aggregation against Byzantine Attacks [Xia et al., 2019]."""

from __future__ import annotations

from .robust_strategy import RobustStrategy


class FABA(RobustStrategy):
    """FABA [Xia et al., 2019] strategy.

    Repeats f times: remove the update farthest (L2) from the mean of the
    remaining ones; the new model moves by the mean of the n - f left.
    Needs n > 2f valid replies. The round's MetricRecord lists the removed
    node ids in removal order ("removed-node-ids").

    Parameters
    ----------
    **kwargs : Any
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.

    Examples
    --------
    Replace ``FedAvg(...)`` in a Message-API ServerApp::

        strategy = FABA(num_malicious_nodes=3)
        result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)
        result.train_metrics_clientapp[10]["removed-node-ids"]
    """

    rule_name = "faba"
