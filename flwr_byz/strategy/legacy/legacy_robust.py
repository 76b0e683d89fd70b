"""The flwr-byz rules for apps still on Flower's legacy strategy API."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import Array, ArrayRecord
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarray_to_bytes,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.supercore import log

from ..client_metrics import mean_client_metrics
from ..layer_state import NodeIdMap, load_tagged_state, tagged_state
from ..model_layout import NUMPY_STYPE, parse_npy_header
from ..reply_validation import Candidate, RejectReason, SentModel
from ..robust_strategy import RobustStrategy
from ..round_core import run_robust_round


@dataclass(frozen=True)
class _RawArray:
    """A legacy tensor seen through the Array fields the validator reads."""

    stype: str
    dtype: str
    shape: tuple[int, ...]
    data: Any


def _node_id(proxy: ClientProxy) -> int:
    """Flower node id of a legacy client proxy (its cid when it has none)."""
    node_id = getattr(proxy, "node_id", None)
    if isinstance(node_id, int) and not isinstance(node_id, bool):
        return node_id
    cid = str(getattr(proxy, "cid", ""))
    # Deterministic id for non-numeric cids, so duplicates are still detected.
    return int(cid) if cid.isdigit() else zlib.crc32(cid.encode())


def parameters_to_record(parameters: Parameters) -> ArrayRecord:
    """View legacy Parameters as an ArrayRecord keyed "0", "1", ... (no copy)."""
    if parameters.tensor_type != NUMPY_STYPE:
        raise ValueError(
            f"tensor_type={parameters.tensor_type!r}: only {NUMPY_STYPE!r} is supported"
        )
    arrays = {}
    for i, tensor in enumerate(parameters.tensors):
        header = parse_npy_header(tensor)
        arrays[str(i)] = Array(
            dtype=str(header.dtype),
            shape=header.shape,
            stype=NUMPY_STYPE,
            data=bytes(tensor),
        )
    return ArrayRecord(arrays)


def _as_legacy_value(value: Any, lists_as_json: bool) -> Any:
    # Flower's legacy History stores any value; its Value type has int/float lists.
    if lists_as_json and isinstance(value, list):
        return json.dumps(value)
    return value


class LegacyRobust(LegacyFedAvg):
    """A flwr-byz strategy behind Flower's legacy ``aggregate_fit`` API.

    Wraps any Message-API :class:`~flwr_byz.strategy.RobustStrategy` (FABA,
    Krum, ...) and runs its rule through the same validation + update core; the
    legacy sampling and evaluation of ``flwr.server.strategy.FedAvg`` are kept.

    Parameters
    ----------
    strategy : RobustStrategy
        The configured rule, e.g. ``FABA(num_malicious_nodes=3)``: its budget,
        weighting, server learning rate, momentum and device are used, and its
        :attr:`~RobustStrategy.history` receives the round reports.
    lists_as_json : bool (default: False)
        Encode the diagnostics lists as JSON strings, for code that needs every
        metric to be a legacy ``Scalar``.
    **kwargs : Any
        Arguments of ``flwr.server.strategy.FedAvg`` (``fraction_fit``,
        ``min_fit_clients``, ``initial_parameters``, ``on_fit_config_fn``,
        ``fit_metrics_aggregation_fn``, ...).

    Notes
    -----
    The weight of a reply is ``FitRes.num_examples`` (used only when the wrapped
    strategy has ``weighted_aggregation=True``). The diagnostics lists
    (``"node-ids"``, ``"removed-node-ids"``, ``"suspected-node-ids"``, ...) are
    Flower's native ``list[int]`` / ``list[float]`` values (its legacy ``Value``
    type; the ``History`` keeps them as they are), the same as the Message API's;
    failed clients that raised (no FitRes) are counted in ``"num-failures"``.

    Examples
    --------
    ::

        strategy = LegacyRobust(FABA(num_malicious_nodes=3), min_fit_clients=10)
        fl.simulation.start_simulation(client_fn=..., strategy=strategy, ...)
    """

    def __init__(
        self, strategy: RobustStrategy, *, lists_as_json: bool = False, **kwargs: Any
    ) -> None:
        if not isinstance(strategy, RobustStrategy):
            raise ValueError(
                f"strategy={strategy!r}: allowed values are "
                "flwr_byz.strategy.RobustStrategy instances"
            )
        super().__init__(**kwargs)
        self.strategy = strategy
        self.lists_as_json = bool(lists_as_json)
        self._sent: SentModel | None = None
        self._sent_parameters: Parameters | None = None

    def __repr__(self) -> str:
        return f"LegacyRobust({type(self.strategy).__name__})"

    def state_dict(self) -> dict[str, Any]:
        """``{"strategy": <the wrapped strategy's tagged state>}``: the adapter
        carries nothing between rounds of its own."""
        return {"strategy": tagged_state(self.strategy)}

    def load_state_dict(
        self, state: Mapping[str, Any], node_ids: NodeIdMap = None
    ) -> None:
        """Restore :meth:`state_dict` output into the wrapped strategy."""
        load_tagged_state(self.strategy, state["strategy"], node_ids)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Configure the round as legacy FedAvg and remember what is sent."""
        pairs = super().configure_fit(server_round, parameters, client_manager)
        self.remember_sent(server_round, parameters, [p for p, _ in pairs])
        return pairs

    def remember_sent(
        self, server_round: int, parameters: Parameters, clients: list[ClientProxy]
    ) -> None:
        """Record the parameters and recipients of a round."""
        self._sent = SentModel.from_record(
            server_round,
            parameters_to_record(parameters),
            [_node_id(c) for c in clients],
        )
        self._sent_parameters = parameters

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate, robustly aggregate and apply the fit results of a round."""
        sent = self._sent
        if sent is None or sent.server_round != server_round:
            raise RuntimeError(
                f"aggregate_fit(server_round={server_round}) without a matching "
                "configure_fit: the strategy needs the parameters it sent"
            )
        key = self.strategy.weighted_by_key
        candidates: list[Candidate] = []
        num_failures = 0
        for item in [*results, *failures]:
            if isinstance(item, BaseException) or not isinstance(item, tuple):
                num_failures += 1
                continue
            try:
                candidates.append(self._candidate(item, sent, key))
            except Exception:  # a result object we cannot even read
                candidates.append(Candidate(0, None, None, RejectReason.MALFORMED))
        inner = self.strategy
        # The wrapped strategy's plan and round state (momentum, matrix
        # storage): the same state as its own rounds carry on.
        outcome = run_robust_round(
            inner.round_plan(), sent, candidates, inner.round_state
        )
        inner.round_state = outcome.state
        inner.history.append(outcome.report)
        if outcome.arrays is None:
            parameters = self._sent_parameters
        else:
            tensors = [
                old if offset < 0 else ndarray_to_bytes(outcome.arrays[k])
                for k, offset, old in zip(
                    sent.layout.keys,
                    sent.layout.offsets,
                    self._sent_parameters.tensors,
                    strict=True,
                )
            ]
            parameters = Parameters(tensors=tensors, tensor_type=NUMPY_STYPE)
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None:
            pairs = [
                (int(m.get(key, 0)), {k: v for k, v in m.items() if k != key})
                for m in outcome.metrics
            ]
            try:
                metrics.update(self.fit_metrics_aggregation_fn(pairs))
            except Exception:  # user code on client values: log, carry on
                log(logging.WARNING, "fit_metrics_aggregation_fn failed", exc_info=True)
        else:
            metrics.update(
                mean_client_metrics(outcome.metrics, outcome.weights, exclude=(key,))
            )
        for name, value in outcome.report.to_metrics().items():
            metrics[name] = _as_legacy_value(value, self.lists_as_json)
        metrics["num-failures"] = num_failures
        return parameters, metrics

    @staticmethod
    def _candidate(
        item: tuple[ClientProxy, FitRes], sent: SentModel, key: str
    ) -> Candidate:
        proxy, res = item
        node_id = _node_id(proxy)
        if not isinstance(res, FitRes) or res.status.code != Code.OK:
            return Candidate(node_id, None, None, RejectReason.ERROR_REPLY)
        metrics = dict(res.metrics or {})
        metrics[key] = res.num_examples
        params = res.parameters
        if params.tensor_type != NUMPY_STYPE:
            return Candidate(node_id, None, metrics, RejectReason.WRONG_STYPE)
        layout = sent.layout
        num = len(params.tensors)
        if num != len(layout.keys):
            reason = (
                RejectReason.MISSING_KEYS
                if num < len(layout.keys)
                else RejectReason.EXTRA_KEYS
            )
            return Candidate(node_id, None, metrics, reason)
        arrays = {
            k: _RawArray(NUMPY_STYPE, str(dtype), shape, tensor)
            for k, dtype, shape, tensor in zip(
                layout.keys, layout.dtypes, layout.shapes, params.tensors, strict=True
            )
        }
        return Candidate(node_id, arrays, metrics)


__all__ = ["LegacyRobust", "parameters_to_record"]
