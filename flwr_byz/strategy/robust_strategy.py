"""Shared base of every flwr-byz Message-API strategy."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from logging import INFO
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from flwr_byz.aggregation.bounds import byzantine_budget
from flwr_byz.aggregation.registry import REGISTRY, RULE_BY_NAME
from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.aggregation.sketch import CountSketch
from flwr_byz.configuration_errors import stop_on_configuration_errors
from flwr_byz.devices import resolve_device
from flwr_byz.validation import boolean, integer, number, require

from .client_metrics import mean_client_metrics
from .layer_state import NodeIdMap
from .model_layout import NUMPY_STYPE, ModelLayout
from .reply_validation import (
    Candidate,
    RejectReason,
    SentModel,
    attribute_replies,
    instruction_destinations,
    message_to_candidate,
)
from .round_core import RoundPlan, RoundState, run_robust_round
from .round_report import RoundReport
from .sampling import check_seconds, sample_connected


# pylint: disable=too-many-instance-attributes
class RobustStrategy(FedAvg):
    """Byzantine-robust FedAvg: validates every reply, aggregates updates robustly.

    Sampling, configuration and federated evaluation behave as in Flower's
    :class:`~flwr.serverapp.strategy.FedAvg`, with two liveness limits: each round
    samples from the nodes connected at that moment and waits at most
    `node_wait_timeout` seconds for `min_available_nodes` of them (then
    :class:`~flwr_byz.strategy.sampling.NotEnoughNodesError` ends the run instead
    of waiting forever), and :meth:`start` waits `round_timeout` seconds for the
    replies of a round, then aggregates what arrived. Training differs:

    * ``configure_train`` remembers the model and the nodes of each round;
    * ``aggregate_train`` validates every reply on its own (see
      :class:`~flwr_byz.strategy.reply_validation.RejectReason`), builds the
      ``(n, d)`` float32 matrix of updates ``Δ_i = w_i - θ_t`` (zero-copy reads
      of the reply bytes), asks :meth:`aggregate_updates` for the aggregate
      and sets ``θ_{t+1} = θ_t + server_learning_rate · aggregate``.

    Invalid replies are excluded and reported; a sampled node without a reply is
    reported as missing under its own node id, with a
    :class:`~flwr_byz.strategy.round_report.MissingReason` (timed out, or
    reported offline by the SuperLink); if fewer valid replies remain
    than :meth:`min_nodes` needs, the model is returned unchanged. The round's
    MetricRecord carries the diagnostics (node ids in row order, selected,
    removed in removal order, scores, weights, rejected ids and reason codes,
    ``status``), followed by the clients' own metrics (mean over valid
    replies); :attr:`history` holds one :class:`RoundReport` per round.

    Parameters
    ----------
    fraction_train : float (default: 1.0)
        Fraction of nodes used during training. In case `min_train_nodes`
        is larger than `fraction_train * total_connected_nodes`, `min_train_nodes`
        will still be sampled.
    fraction_evaluate : float (default: 1.0)
        Fraction of nodes used during validation. In case `min_evaluate_nodes`
        is larger than `fraction_evaluate * total_connected_nodes`,
        `min_evaluate_nodes` will still be sampled.
    min_train_nodes : int (default: 2)
        Minimum number of nodes used during training.
    min_evaluate_nodes : int (default: 2)
        Minimum number of nodes used during validation.
    min_available_nodes : int (default: 2)
        Minimum number of connected nodes a round waits for (at most
        `node_wait_timeout` seconds).
    num_malicious_nodes : Optional[int] (default: None)
        Number ``f`` of Byzantine updates the rule must tolerate. At most one
        of `num_malicious_nodes` and `malicious_fraction` may be given; rules
        whose behaviour depends on ``f`` (FABA, Krum, MultiKrum, Bulyan,
        GeoMed, BruteForce) require one of them, the others take ``f = 0``.
    malicious_fraction : Optional[float] (default: None)
        Byzantine budget as a fraction in ``[0, 0.5)``: each round
        ``f = floor(malicious_fraction * num_valid_replies)``.
    weighted_by_key : str (default: "num-examples")
        Key of the MetricRecord value used as weight when
        `weighted_aggregation` is on (and for federated evaluation metrics).
    weighted_aggregation : bool (default: False)
        Weight updates by the clients' self-reported `weighted_by_key`. Off by
        default: a Byzantine client can claim any size.
    server_learning_rate : float (default: 1.0)
        Server step size ``η`` in ``θ_{t+1} = θ_t + η · aggregate``.
    server_momentum : float (default: 0.0)
        Server momentum ``μ`` in ``[0, 1)``: ``v = μ v + aggregate``,
        ``θ_{t+1} = θ_t + η v``.
    device : str (default: "cpu")
        Where the rule runs: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    round_timeout : float (default: 600.0)
        Seconds :meth:`start` waits for the replies of a training (and of an
        evaluation) round; the round then goes on with the replies that arrived,
        and every sampled node without one is reported ``TIMED_OUT``.
    node_wait_timeout : float (default: 300.0)
        Seconds a round waits for enough connected nodes (``min_available_nodes``
        and the sample size) before it raises
        :class:`~flwr_byz.strategy.sampling.NotEnoughNodesError`.
    distance_sketch : int (default: 0)
        ``0``: exact distances. ``k >= 16``: rules that decide on pairwise
        distances (FABA, Krum, MultiKrum, Bulyan, GeoMed) decide on a seeded
        ``k``-column count sketch of the updates instead (opt-in, approximate:
        each squared distance within a relative standard deviation of
        ``√(2/k)``; the aggregate is still computed from the exact updates; see
        :mod:`flwr_byz.aggregation.sketch`). For many clients and large models.
    sketch_seed : int (default: 0)
        Seed of the sketch's hash and signs.
    arrayrecord_key : str (default: "arrays")
        Key used to store the ArrayRecord when constructing Messages.
    configrecord_key : str (default: "config")
        Key used to store the ConfigRecord when constructing Messages.
    train_metrics_aggr_fn : Optional[callable] (default: None)
        Function with signature (list[RecordDict], str) -> MetricRecord applied
        to the valid replies' contents. If `None`, the clients' numeric metrics
        are averaged (unweighted unless `weighted_aggregation`), skipping
        non-finite values.
    evaluate_metrics_aggr_fn : Optional[callable] (default: None)
        Function with signature (list[RecordDict], str) -> MetricRecord for
        evaluation replies. If `None`, numeric metrics are averaged weighted by
        `weighted_by_key` where present and valid, skipping bad replies.
    """

    #: Name of the rule in :data:`flwr_byz.aggregation.registry.REGISTRY`: its
    #: bound, and the defaults of the two flags below, come from there.
    rule_name: str = "mean"
    #: Values of the rule entry's own parameters (:attr:`Rule.params`), passed to
    #: its ``aggregate``; a generated strategy class sets them from its arguments.
    rule_params: Mapping[str, Any] = MappingProxyType({})
    #: Whether the rule accepts per-update weights.
    supports_weights: bool = True
    #: Whether ``f`` changes what the rule does: then exactly one of
    #: ``num_malicious_nodes`` and ``malicious_fraction`` must be given.
    uses_f: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Take ``uses_f`` / ``supports_weights`` from the rule's registry entry
        unless the subclass sets them itself."""
        super().__init_subclass__(**kwargs)
        rule = RULE_BY_NAME.get(cls.__dict__.get("rule_name", ""))
        if rule is not None:
            if "uses_f" not in cls.__dict__:
                cls.uses_f = rule.uses_f
            if "supports_weights" not in cls.__dict__:
                cls.supports_weights = rule.supports_weights

    # pylint: disable=too-many-arguments,too-many-positional-arguments,too-many-locals
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        num_malicious_nodes: int | None = None,
        malicious_fraction: float | None = None,
        weighted_by_key: str = "num-examples",
        weighted_aggregation: bool = False,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        device: str = "cpu",
        round_timeout: float = 600.0,
        node_wait_timeout: float = 300.0,
        distance_sketch: int = 0,
        sketch_seed: int = 0,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: (
            Callable[[list[RecordDict], str], MetricRecord] | None
        ) = None,
        evaluate_metrics_aggr_fn: (
            Callable[[list[RecordDict], str], MetricRecord] | None
        ) = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        require("fraction_train", fraction_train, number(0.0, 1.0))
        require("fraction_evaluate", fraction_evaluate, number(0.0, 1.0))
        if num_malicious_nodes is not None and malicious_fraction is not None:
            raise ValueError(
                "give at most one of num_malicious_nodes and malicious_fraction, "
                f"got num_malicious_nodes={num_malicious_nodes!r} and "
                f"malicious_fraction={malicious_fraction!r}"
            )
        if self.uses_f and num_malicious_nodes is None and malicious_fraction is None:
            raise ValueError(
                f"{type(self).__name__} needs a Byzantine budget: give "
                "num_malicious_nodes (an integer >= 0) or malicious_fraction "
                "(a number in [0, 0.5)), got neither"
            )
        require("num_malicious_nodes", num_malicious_nodes, integer(0, optional=True))
        if malicious_fraction is not None:
            require(
                "malicious_fraction",
                malicious_fraction,
                number(0.0, 0.5, high_open=True),
            )
        require(
            "server_learning_rate", server_learning_rate, number(0.0, low_open=True)
        )
        require("server_momentum", server_momentum, number(0.0, 1.0, high_open=True))
        require("weighted_aggregation", weighted_aggregation, boolean())
        if weighted_aggregation and not self.supports_weights:
            raise ValueError(
                f"weighted_aggregation=True is not supported by "
                f"{type(self).__name__} (its rule does not weight updates); "
                "allowed value: False"
            )
        self.num_malicious_nodes = (
            None if num_malicious_nodes is None else int(num_malicious_nodes)
        )
        self.malicious_fraction = (
            None if malicious_fraction is None else float(malicious_fraction)
        )
        self.weighted_aggregation = weighted_aggregation
        self.server_learning_rate = float(server_learning_rate)
        self.server_momentum = float(server_momentum)
        self.device = device
        self.torch_device = resolve_device(device)
        self.round_timeout = check_seconds(
            "round_timeout", round_timeout, positive=True
        )
        self.node_wait_timeout = check_seconds("node_wait_timeout", node_wait_timeout)
        self.distance_sketch = self._check_sketch(distance_sketch)
        #: The count sketch the rule decides on (``None``: exact distances).
        self.sketch = (
            CountSketch(
                self.distance_sketch, require("sketch_seed", sketch_seed, integer())
            )
            if self.distance_sketch
            else None
        )
        #: The instructions of the last configured training round (their message
        #: ids, set by the grid when it pushes them, attribute SuperLink notices).
        self._instructions: list[Message] = []
        self._user_train_metrics_aggr_fn = train_metrics_aggr_fn
        self._user_evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn
        self.history: list[RoundReport] = []
        self._sent: SentModel | None = None
        #: Server momentum and update-matrix storage, carried between rounds.
        self.round_state = RoundState()

    def _check_sketch(self, k: int) -> int:
        require("distance_sketch", k, _sketch_width)
        rule = RULE_BY_NAME.get(self.rule_name)
        if k and not (rule is not None and rule.uses_distances):
            users = ", ".join(r.name for r in REGISTRY if r.uses_distances)
            raise ValueError(
                f"distance_sketch={k}: {type(self).__name__} does not decide on "
                f"pairwise distances; the sketch applies to {users}. Use "
                "distance_sketch=0"
            )
        return int(k)

    # ------------------------------------------------------------------ hooks
    def min_nodes(self, f: int) -> int:
        """Smallest number of valid replies the rule accepts for budget ``f``."""
        from flwr_byz.aggregation import min_nodes

        return int(min_nodes(self.rule_name, f))

    @property
    def streams_mean(self) -> bool:
        """Whether a round averages the replies as it decodes them.

        True for the plain mean rule when :meth:`aggregate_updates` is not
        overridden: no ``(n, d)`` update matrix is built, as in Flower's
        ``FedAvg``. Every reply is still validated on its own.
        """
        return (
            self.rule_name == "mean"
            and type(self).aggregate_updates is RobustStrategy.aggregate_updates
        )

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Aggregate the valid replies' updates: the rule this strategy runs.

        Parameters
        ----------
        round_input : RoundInput
            The round's ``(n, d)`` float32 updates ``w_i - θ_t`` on
            :attr:`torch_device` (one row per valid reply, in the order of its
            ``node_ids``; only valid during the call: on CPU the storage is
            reused next round, clone to keep), the validated weights when
            `weighted_aggregation`, the budget ``f``, the flat model ``θ_t``
            and the sent model's layout.

        Returns
        -------
        AggregationResult
            Aggregate and decisions (row indices). By default the registry
            entry's ``aggregate`` of :attr:`rule_name`.
        """
        rule = RULE_BY_NAME.get(self.rule_name)
        if rule is None or rule.needs_server_data:
            raise NotImplementedError(
                f"{type(self).__name__}: rule {self.rule_name!r} has no registry "
                "aggregate; override aggregate_updates"
            )
        return rule.decide(round_input, sketch=self.sketch, **self.rule_params)

    def round_plan(self) -> RoundPlan:
        """What :func:`~flwr_byz.strategy.round_core.run_robust_round` needs from
        this strategy: its settings, its budget and bound, and its rule."""
        return RoundPlan(
            name=type(self).__name__,
            budget=partial(
                resolve_budget,
                count=self.num_malicious_nodes,
                fraction=self.malicious_fraction,
            ),
            bound=self.min_nodes,
            decide=self.aggregate_updates,
            streams_mean=self.streams_mean,
            weighted_by=self.weighted_by_key if self.weighted_aggregation else None,
            device=self.torch_device,
            lr=self.server_learning_rate,
            momentum=self.server_momentum,
        )

    # --------------------------------------------------------------- helpers
    def resolve_f(self, num_valid: int) -> int:
        """Byzantine budget ``f`` for a round with ``num_valid`` valid replies."""
        return resolve_budget(
            num_valid, count=self.num_malicious_nodes, fraction=self.malicious_fraction
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What the strategy carries from one round to the next.

        ``{"momentum": (d,) float32 tensor or None}``: the server-momentum buffer
        (``None`` before the first step or without momentum). The ``(n, d)``
        update matrix is storage reused between rounds, not state; subclasses
        that carry more (:class:`~flwr_byz.strategy.GAA`) add their keys.
        """
        momentum = self.round_state.momentum
        return {
            "momentum": None
            if momentum is None
            else torch.from_numpy(np.array(momentum, copy=True))
        }

    def load_state_dict(
        self, state: Mapping[str, Any], node_ids: NodeIdMap = None
    ) -> None:
        """Restore :meth:`state_dict` output (``node_ids``: it holds none)."""
        momentum = state["momentum"]
        if momentum is not None and not isinstance(momentum, torch.Tensor):
            raise ValueError(
                f"state['momentum']: expected a tensor or None, got "
                f"{type(momentum).__name__}"
            )
        self.round_state = RoundState(
            momentum=None if momentum is None else momentum.numpy().copy()
        )

    @property
    def layout(self) -> ModelLayout | None:
        """Layout (keys, shapes, flat offsets) of the model sent last round."""
        return None if self._sent is None else self._sent.layout

    def _settings(self) -> list[tuple[str, object]]:
        """Rule-specific settings shown by :meth:`summary`."""
        return []

    def summary(self) -> None:
        """Log summary configuration of the strategy.

        Replaces FedAvg's summary, whose "Weighted by" line would contradict an
        unweighted training aggregation.
        """
        log(INFO, "\t├──> %s settings:", type(self).__name__)
        budget = (
            f"floor({self.malicious_fraction} * num-valid)"
            if self.malicious_fraction is not None
            else str(self.num_malicious_nodes or 0)
        )
        training = (
            f"weighted by clients' '{self.weighted_by_key}'"
            if self.weighted_aggregation
            else "unweighted (clients' sizes are not trusted)"
        )
        rows: list[tuple[str, object]] = [
            ("Byzantine budget f", budget),
            *self._settings(),
            ("Training aggregation", training),
            ("Server learning rate", self.server_learning_rate),
            ("Server momentum", self.server_momentum),
            ("Device", str(self.torch_device)),
        ]
        if self.sketch is not None:
            rows.insert(-3, ("Distances", f"count sketch, k = {self.sketch.k}"))
        for i, (name, value) in enumerate(rows):
            branch = "└──" if i == len(rows) - 1 else "├──"
            log(INFO, "\t│\t%s %s: %s", branch, name, value)
        log(INFO, "\t├──> Sampling:")
        log(
            INFO,
            "\t│\t├──Fraction: train (%.2f) | evaluate ( %.2f)",
            self.fraction_train,
            self.fraction_evaluate,
        )
        log(
            INFO,
            "\t│\t├──Minimum nodes: train (%d) | evaluate (%d)",
            self.min_train_nodes,
            self.min_evaluate_nodes,
        )
        log(
            INFO,
            "\t│\t├──Minimum available nodes: %d (waiting at most %g s)",
            self.min_available_nodes,
            self.node_wait_timeout,
        )
        log(INFO, "\t│\t└──Round timeout: %g s", self.round_timeout)
        log(INFO, "\t└──> Keys in records:")
        log(INFO, "\t\t├── Evaluation metrics weighted by: '%s'", self.weighted_by_key)
        log(INFO, "\t\t├── ArrayRecord key: '%s'", self.arrayrecord_key)
        log(INFO, "\t\t└── ConfigRecord key: '%s'", self.configrecord_key)

    # ------------------------------------------------------------------ run
    # pylint: disable-next=too-many-arguments,too-many-positional-arguments
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's ``Strategy.start``; ``timeout`` defaults to `round_timeout`."""
        return super().start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=self.round_timeout if timeout is None else timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def _configure(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
        train: bool,
    ) -> list[Message]:
        """FedAvg's configure_*, sampling the nodes connected now (bounded wait)."""
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []
        node_ids, connected = sample_connected(
            grid,
            fraction,
            self.min_train_nodes if train else self.min_evaluate_nodes,
            self.min_available_nodes,
            self.node_wait_timeout,
        )
        log(
            INFO,
            "configure_%s: Sampled %s nodes (out of %s)",
            "train" if train else "evaluate",
            len(node_ids),
            len(connected),
        )
        config["server-round"] = server_round
        record = RecordDict(
            {self.arrayrecord_key: arrays, self.configrecord_key: config}
        )
        message_type = MessageType.TRAIN if train else MessageType.EVALUATE
        return [
            Message(content=record, message_type=message_type, dst_node_id=node_id)
            for node_id in node_ids
        ]

    # ---------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the next round of training and remember what is sent."""
        messages = self._configure(server_round, arrays, config, grid, train=True)
        self.remember_sent(
            server_round,
            arrays,
            {m.metadata.dst_node_id: m.metadata.message_type for m in messages},
        )
        self._instructions = messages
        return messages

    def remember_sent(
        self, server_round: int, arrays: ArrayRecord, message_types: dict[int, str]
    ) -> None:
        """Record the model and recipients (node id -> message type) of a round."""
        self._sent = SentModel.from_record(
            server_round, arrays, list(message_types), message_types
        )
        self._instructions = []

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, robustly aggregate and apply the replies of a round.

        Returns the new model, or the unchanged model when the round cannot
        update it (too few valid replies, rule failure, non-finite result),
        and a MetricRecord with the round's diagnostics.
        """
        sent = self._sent
        if sent is None or sent.server_round != server_round:
            raise RuntimeError(
                f"aggregate_train(server_round={server_round}) without a matching "
                "configure_train: the strategy needs the model it sent"
            )
        # The SuperLink answers for a node it considers gone (sender id 1): such a
        # notice makes that node missing, it is not a reply to validate.
        replies = list(replies)
        # A round of nothing but ClientApp configuration errors (e.g. a bare
        # byzantine_mod) can never aggregate: stop the run with that error.
        stop_on_configuration_errors(server_round, replies)
        destinations = instruction_destinations(self._instructions)
        replies, absent = attribute_replies(replies, destinations, sent.node_ids)
        candidates = []
        for msg in replies:
            try:
                candidates.append(message_to_candidate(msg, sent, destinations))
            except Exception:  # a reply object we cannot even read
                # 0 (the SuperLink's id, never a client's) marks an unreadable sender.
                node = getattr(getattr(msg, "metadata", None), "src_node_id", 0)
                candidates.append(
                    Candidate(
                        node if isinstance(node, int) else 0,
                        None,
                        None,
                        RejectReason.MALFORMED,
                    )
                )
        log(
            INFO,
            "aggregate_train: received %d replies from %d nodes sent to",
            len(candidates),
            len(sent.node_ids),
        )
        outcome = run_robust_round(
            self.round_plan(), sent, candidates, self.round_state, absent
        )
        self.round_state = outcome.state
        report = outcome.report
        self.history.append(report)
        if outcome.arrays is None:
            arrays = sent.record
        else:
            arrays = _new_record(sent, outcome.arrays)
        metrics = MetricRecord(self._client_train_metrics(outcome))
        for key, value in report.to_metrics().items():
            metrics[key] = value
        log(INFO, "aggregate_train: %s", _report_line(report))
        return arrays, metrics

    def _client_train_metrics(self, outcome) -> dict:
        """The clients' own metrics, aggregated over the valid replies."""
        if self._user_train_metrics_aggr_fn is None:
            return mean_client_metrics(
                outcome.metrics, outcome.weights, exclude=(self.weighted_by_key,)
            )
        contents = [
            RecordDict({"metrics": MetricRecord(dict(m))}) for m in outcome.metrics
        ]
        try:
            return dict(
                self._user_train_metrics_aggr_fn(contents, self.weighted_by_key)
            )
        except Exception:  # user aggregation on client values: log, carry on
            log(logging.WARNING, "train_metrics_aggr_fn failed", exc_info=True)
            return {}

    # ------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the next round of federated evaluation (nodes connected now)."""
        return self._configure(server_round, arrays, config, grid, train=False)

    def aggregate_evaluate(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> MetricRecord | None:
        """Aggregate evaluation metrics, skipping error and malformed replies."""
        records: list[MetricRecord] = []
        weights: list[float] = []
        for msg in replies:
            try:
                if msg.has_error() or not msg.has_content():
                    continue
                found = list(msg.content.metric_records.values())
                if len(found) != 1:
                    continue
                value = found[0].get(self.weighted_by_key, 1.0)
                weight = (
                    float(value)
                    if isinstance(value, int | float) and not isinstance(value, bool)
                    else math.nan
                )
                if not (math.isfinite(weight) and weight > 0):
                    continue
                records.append(found[0])
                weights.append(weight)
            except Exception:  # pylint: disable=broad-except
                continue
        if not records:
            return None
        if self._user_evaluate_metrics_aggr_fn is not None:
            try:
                return self._user_evaluate_metrics_aggr_fn(
                    [RecordDict({"metrics": r}) for r in records], self.weighted_by_key
                )
            except Exception:  # pylint: disable=broad-except
                log(logging.WARNING, "evaluate_metrics_aggr_fn failed", exc_info=True)
                return None
        return MetricRecord(
            mean_client_metrics(records, weights, exclude=(self.weighted_by_key,))
        )


def _new_record(sent: SentModel, arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """The new model: ``arrays`` encoded, the sent non-float arrays as sent.

    Filled item by item: ``ArrayRecord(dict)`` would copy every new Array once
    more.
    """
    record = ArrayRecord()
    for key, offset in zip(sent.layout.keys, sent.layout.offsets, strict=True):
        if offset < 0:
            old = sent.record[key]
            record[key] = Array(
                dtype=old.dtype, shape=tuple(old.shape), stype=old.stype, data=old.data
            )
        else:
            record[key] = _encoded(arrays[key], sent, key)
    return record


def _encoded(value: np.ndarray, sent: SentModel, key: str) -> Array:
    """``value``, the new array ``key``, as a Flower Array.

    Where it has the sent array's dtype and shape (the server step keeps both)
    and the sent array is C-order, its bytes are the sent ``.npy`` header and
    the values: what ``numpy.save`` writes, without formatting a header per
    array and round.
    """
    header = sent.headers.get(key)
    old = sent.arrays[key]
    if header is None or value.dtype != old.dtype or value.shape != old.shape:
        return Array(value)
    return Array(
        dtype=str(value.dtype),
        shape=value.shape,
        stype=NUMPY_STYPE,
        data=header + value.tobytes(order="C"),
    )


def _sketch_width(value: object) -> str | None:
    """A :mod:`flwr_byz.validation` check of ``distance_sketch``."""
    if integer()(value) is None and (value == 0 or value >= 16):
        return None
    return "0 (exact distances) or integers >= 16 (sketch width)"


def resolve_budget(num_valid: int, *, count: int | None, fraction: float | None) -> int:
    """The Byzantine budget ``f`` for ``num_valid`` valid replies: ``count``, or
    ``floor(fraction · num_valid)`` when a fraction is given, else ``0``."""
    if fraction is not None:
        return byzantine_budget(fraction, num_valid)
    return count or 0


def _report_line(report: RoundReport) -> str:
    parts = [
        f"status={report.status.name}",
        f"valid={report.num_valid}",
        f"f={report.f}",
        f"removed={report.removed}",
    ]
    if report.rejected:
        parts.append(f"rejected={report.rejected}")
    if report.missing:
        parts.append(
            "missing="
            + str(list(zip(report.missing, report.missing_reasons, strict=False)))
        )
    return " ".join(parts)
