"""One robust training round, shared by the Message-API and legacy strategies.

Both front ends reduce their replies to :class:`Candidate` objects and call
:func:`run_robust_round` with the rule and the strategy's :class:`RoundState`:

1. :func:`~flwr_byz.strategy.reply_validation.validate_replies` (reply
   validation, one module) builds the ``(n, d)`` update matrix;
2. the budget ``f`` and the rule's bound;
3. the rule's aggregate;
4. :func:`~flwr_byz.strategy.server_step.server_step`, a pure keyword-only
   function, moves the model.

The rule is anything with the :class:`RoundRule` methods and settings (every
``RobustStrategy`` is one); this module imports no strategy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from flwr.supercore import log

from flwr_byz.aggregation.result import AggregationResult

from .reply_validation import (
    AveragedReplies,
    Candidate,
    SentModel,
    ValidReplies,
    average_replies,
    validate_replies,
)
from .round_report import MissingReason, RoundReport, RoundStatus
from .server_step import server_step
from .suspicion import sample_index, suspected_rows

__all__ = [
    "Candidate",
    "RoundOutcome",
    "RoundRule",
    "RoundState",
    "SentModel",
    "run_robust_round",
]


class RoundRule(Protocol):
    """What :func:`run_robust_round` needs from a rule (a ``RobustStrategy``)."""

    weighted_aggregation: bool
    weighted_by_key: str
    torch_device: torch.device
    server_learning_rate: float
    server_momentum: float
    #: Optional: when true, the round averages replies while decoding them and
    #: never calls :meth:`aggregate_updates` (the plain mean rule).
    streams_mean: bool

    def resolve_f(self, num_valid: int) -> int:
        """Byzantine budget for ``num_valid`` valid replies."""
        ...

    def min_nodes(self, f: int) -> int:
        """Smallest number of valid replies the rule accepts for ``f``."""
        ...

    def aggregate_updates(
        self,
        server_round: int,
        updates: torch.Tensor,
        node_ids: list[int],
        weights: torch.Tensor | None,
        f: int,
        global_flat: torch.Tensor,
    ) -> AggregationResult:
        """The rule on the ``(n, d)`` updates."""
        ...


@dataclass
class RoundState:
    """What a strategy carries from one round to the next.

    Handed to :func:`run_robust_round` (by ``RobustStrategy`` and by the legacy
    adapter alike), which updates it in place.

    Attributes
    ----------
    momentum : numpy.ndarray or None
        The server momentum buffer ``v`` (``None`` before the first step or
        without momentum).
    buffer : numpy.ndarray or None
        Storage of the ``(n, d)`` update matrix, reused from round to round. Set
        it to ``None`` to have the next round allocate a fresh one.
    """

    momentum: np.ndarray | None = None
    buffer: np.ndarray | None = None


@dataclass
class RoundOutcome:
    """Result of :func:`run_robust_round`.

    Attributes
    ----------
    arrays : dict[str, numpy.ndarray] or None
        The new model's arrays in key order (``None``: keep the sent model).
    report : RoundReport
        What was decided.
    metrics : list[Mapping[str, Any]]
        Metrics of the valid replies (row order).
    weights : list[float] or None
        Their validated weights when weighting is on.
    """

    arrays: dict[str, np.ndarray] | None
    report: RoundReport
    metrics: list[Mapping[str, Any]]
    weights: list[float] | None


def _row_ids(rows: Sequence[int], node_ids: Sequence[int]) -> list[int]:
    return [int(node_ids[r]) for r in rows]


def _streamed_mean(valid: AveragedReplies) -> AggregationResult:
    """The mean rule's result for replies averaged while they were decoded."""
    n = len(valid.node_ids)
    if valid.weights is None:
        coeffs = [1.0 / n] * n
    else:
        total = math.fsum(valid.weights)
        coeffs = [w / total for w in valid.weights]
    return AggregationResult(
        aggregate=torch.from_numpy(valid.mean),
        selected=tuple(i for i in range(n) if coeffs[i] > 0.0),
        weights=tuple(coeffs),
    )


def _suspect(report: RoundReport, updates: torch.Tensor, sampled: bool) -> None:
    """Fill ``report.suspected`` (a diagnostic: never fails the round)."""
    try:
        report.suspected = _row_ids(
            suspected_rows(updates, sampled=sampled), report.node_ids
        )
    except Exception:  # pylint: disable=broad-except
        log(
            logging.WARNING,
            "Round %d: suspected-node-ids not computed",
            report.server_round,
            exc_info=True,
        )


def run_robust_round(
    rule: RoundRule,
    server_round: int,
    sent: SentModel,
    candidates: Sequence[Candidate],
    state: RoundState,
    absent: Mapping[int, MissingReason] | None = None,
) -> RoundOutcome:
    """Validate replies, aggregate their updates with ``rule`` and step.

    Never raises because of reply content: every problem becomes a rejected
    reply or a round status in the report.

    Parameters
    ----------
    rule : RoundRule
        Supplies the budget (``resolve_f``), the bound (``min_nodes``), the
        aggregate (``aggregate_updates``, whose result also carries the rule's
        own metrics and verdict) and the server step settings.
    server_round : int
        The round.
    sent : SentModel
        The model and recipients of this round.
    candidates : Sequence[Candidate]
        The replies.
    state : RoundState
        Momentum and matrix storage from the previous round; updated in place.
    absent : Mapping[int, MissingReason] or None
        Nodes the SuperLink reported missing, and why; any other node without a
        candidate is reported ``TIMED_OUT``.

    Returns
    -------
    RoundOutcome
        New arrays (or ``None``), the report and the valid replies' metrics.
    """
    t0 = time.perf_counter()
    layout = sent.layout
    report = RoundReport(server_round=server_round, num_sent=len(sent.node_ids))
    weighted_by = rule.weighted_by_key if rule.weighted_aggregation else None
    streams = bool(getattr(rule, "streams_mean", False))
    valid: ValidReplies
    if streams:
        # A plain mean needs no (n, d) matrix: each reply is added as it is
        # decoded, and only the suspicion's column sample is kept.
        valid = average_replies(
            sent,
            candidates,
            report,
            weighted_by=weighted_by,
            columns=sample_index(len(candidates), layout.d),
            absent=absent,
        )
    else:
        valid = validate_replies(
            sent,
            candidates,
            report,
            weighted_by=weighted_by,
            buffer=state.buffer,
            absent=absent,
        )
        state.buffer = valid.matrix
    matrix = valid.matrix
    node_ids = valid.node_ids
    n = len(node_ids)
    weight_list = valid.weights
    outcome = RoundOutcome(None, report, valid.metrics, weight_list)
    f = rule.resolve_f(n)
    report.f = f
    report.min_nodes = max(1, int(rule.min_nodes(f)))
    if n < report.min_nodes:
        _suspect(report, torch.from_numpy(matrix[:n]), sampled=streams)
        report.status = RoundStatus.BOUND_FAILED
        report.message = (
            f"{n} valid replies < {report.min_nodes} needed by "
            f"{type(rule).__name__} with f={f}; model unchanged"
        )
        log(logging.WARNING, "Round %d: %s", server_round, report.message)
        report.seconds = time.perf_counter() - t0
        return outcome

    _suspect(report, torch.from_numpy(matrix[:n]), sampled=streams)
    try:
        if isinstance(valid, AveragedReplies):
            result = _streamed_mean(valid)
        else:
            device = rule.torch_device
            weights = (
                torch.tensor(weight_list, dtype=torch.float32, device=device)
                if weight_list is not None
                else None
            )
            result = rule.aggregate_updates(
                server_round,
                torch.from_numpy(matrix[:n]).to(device),
                node_ids,
                weights,
                f,
                torch.from_numpy(sent.theta).to(device),
            )
        aggregate = result.aggregate.detach().to("cpu", torch.float32).numpy()
        report.selected = _row_ids(result.selected, node_ids)
        report.removed = _row_ids(result.removed, node_ids)
        report.scores = [float(s) for s in result.scores]
        report.weights = [float(w) for w in result.weights]
        report.extra = dict(result.metrics)
        if result.suspected is not None:  # the rule's own verdict
            report.suspected = _row_ids(result.suspected, node_ids)
        if aggregate.shape != (layout.d,):
            raise ValueError(
                f"aggregate has shape {aggregate.shape}, expected ({layout.d},)"
            )
    except Exception as err:  # a rule failure keeps the model, never the server
        report.status = RoundStatus.AGGREGATION_FAILED
        report.message = f"{type(err).__name__}: {err}; model unchanged"
        log(
            logging.ERROR,
            "Round %d: aggregation failed: %s",
            server_round,
            report.message,
            exc_info=True,
        )
        report.seconds = time.perf_counter() - t0
        return outcome

    if result.no_update:
        # The rule decided not to move the model (e.g. FLTrust with zero trust):
        # its decisions are reported, the model (and momentum) stay as they are.
        report.status = RoundStatus.NO_UPDATE
        report.message = f"{result.no_update}; model unchanged"
        log(logging.WARNING, "Round %d: %s", server_round, report.message)
        report.seconds = time.perf_counter() - t0
        return outcome

    step = server_step(
        theta=sent.arrays,
        layout=layout,
        aggregate=aggregate,
        lr=rule.server_learning_rate,
        momentum=rule.server_momentum,
        buffer=state.momentum,
    )
    finite = step.theta is not None
    if not finite:
        report.status = RoundStatus.NON_FINITE_RESULT
        report.message = "the new model would not be finite; model unchanged"
        log(logging.ERROR, "Round %d: %s", server_round, report.message)
    else:
        report.status = RoundStatus.OK
        outcome.arrays = step.theta
        if rule.server_momentum > 0.0:
            state.momentum = step.buffer
    report.seconds = time.perf_counter() - t0
    return outcome
