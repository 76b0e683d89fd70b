"""One robust training round, shared by the Message-API and legacy strategies.

Both front ends reduce their replies to :class:`Candidate` objects and call
:func:`run_robust_round` with a :class:`RoundPlan` (plain settings and the
rule's ``decide`` function) and the :class:`RoundState` of the last round. The
round is one straight path, each stage a function of the previous one's result:

1. validate: :func:`~flwr_byz.strategy.reply_validation.validate_replies`
   (or, for the streamed mean,
   :func:`~flwr_byz.strategy.reply_validation.average_replies`) returns the
   valid updates, the rejected replies and the missing nodes;
2. decide: the budget ``f`` and the bound from the plan, then ``plan.decide``
   on one :class:`~flwr_byz.aggregation.round_input.RoundInput`;
3. step: :func:`~flwr_byz.strategy.server_step.server_step`, a pure function,
   moves the model;
4. report: one :class:`~flwr_byz.strategy.round_report.RoundReport` built from
   what the stages returned.

The new arrays, the report and the next round's state come back in one
:class:`RoundOutcome`; no argument is changed. This module imports no strategy
and calls nothing but the functions in the plan.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.supercore import log

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.aggregation.validation import normalised

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
    "RoundPlan",
    "RoundState",
    "SentModel",
    "run_robust_round",
]


@dataclass(frozen=True)
class RoundPlan:
    """What a round needs from its strategy: settings and the rule's functions.

    Attributes
    ----------
    name : str
        The rule's name in messages (the strategy class).
    budget : Callable[[int], int]
        The Byzantine budget ``f`` for ``n`` valid replies.
    bound : Callable[[int], int]
        The smallest number of valid replies the rule accepts for ``f``.
    decide : Callable[[RoundInput], AggregationResult]
        The rule on one round's valid updates (not called for a streamed mean).
    streams_mean : bool
        Average the replies while decoding them (a plain mean: no ``(n, d)``
        matrix is built and ``decide`` is not called).
    weighted_by : str or None
        Metric key of the reply weights when weighting is on, else ``None``.
    device : torch.device
        Where the rule runs.
    lr : float
        Server learning rate.
    momentum : float
        Server momentum (``0``: none).
    """

    name: str
    budget: Callable[[int], int]
    bound: Callable[[int], int]
    decide: Callable[[RoundInput], AggregationResult]
    streams_mean: bool
    weighted_by: str | None
    device: torch.device
    lr: float
    momentum: float


@dataclass(frozen=True)
class RoundState:
    """What a strategy carries from one round to the next (immutable).

    :func:`run_robust_round` reads it and returns the next one in
    :attr:`RoundOutcome.state`.

    Attributes
    ----------
    momentum : numpy.ndarray or None
        The server momentum buffer ``v`` (``None`` before the first step or
        without momentum).
    buffer : numpy.ndarray or None
        Storage of the ``(n, d)`` update matrix, reused from round to round
        (``None``: the next round allocates a fresh one).
    """

    momentum: np.ndarray | None = None
    buffer: np.ndarray | None = None


@dataclass(frozen=True)
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
    state : RoundState
        What the next round starts from (momentum, matrix storage).
    """

    arrays: dict[str, np.ndarray] | None
    report: RoundReport
    metrics: list[Mapping[str, Any]]
    weights: list[float] | None
    state: RoundState


@dataclass(frozen=True)
class _Decision:
    """What the decide stage found: a status, the rule's decisions (report
    fields by node id) and the ``(d,)`` aggregate when the model may move."""

    status: RoundStatus
    message: str = ""
    decisions: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    aggregate: np.ndarray | None = None


def _row_ids(rows: Sequence[int], node_ids: Sequence[int]) -> list[int]:
    return [int(node_ids[r]) for r in rows]


def _streamed_mean(valid: AveragedReplies) -> AggregationResult:
    """The mean rule's result for replies averaged while they were decoded."""
    n = len(valid.node_ids)
    coeffs = (
        torch.full((n,), 1.0 / n, dtype=torch.float64)
        if valid.weights is None
        else torch.tensor(valid.weights, dtype=torch.float64)
    )
    coeffs = normalised(coeffs, "mean", "selected")
    return AggregationResult(
        aggregate=torch.from_numpy(valid.mean),
        selected=tuple(i for i in range(n) if float(coeffs[i]) > 0.0),
        weights=tuple(coeffs.tolist()),
    )


def _validate(
    plan: RoundPlan,
    sent: SentModel,
    candidates: Sequence[Candidate],
    state: RoundState,
    absent: Mapping[int, MissingReason] | None,
) -> ValidReplies:
    if plan.streams_mean:
        # A plain mean needs no (n, d) matrix: each reply is added as it is
        # decoded, and only the suspicion's column sample is kept.
        return average_replies(
            sent,
            candidates,
            weighted_by=plan.weighted_by,
            columns=sample_index(len(candidates), sent.layout.d),
            absent=absent,
        )
    return validate_replies(
        sent,
        candidates,
        weighted_by=plan.weighted_by,
        buffer=state.buffer,
        absent=absent,
    )


def _suspect(
    server_round: int, updates: np.ndarray, node_ids: list[int], sampled: bool
) -> list[int]:
    """The robust outliers among the valid rows (a diagnostic: never fails)."""
    try:
        return _row_ids(
            suspected_rows(torch.from_numpy(updates), sampled=sampled), node_ids
        )
    except Exception:  # pylint: disable=broad-except
        log(
            logging.WARNING,
            "Round %d: suspected-node-ids not computed",
            server_round,
            exc_info=True,
        )
        return []


def _decisions(result: AggregationResult, node_ids: list[int]) -> dict[str, Any]:
    """The rule's decisions as :class:`RoundReport` fields, rows named by node id."""
    found: dict[str, Any] = {
        "selected": _row_ids(result.selected, node_ids),
        "removed": _row_ids(result.removed, node_ids),
        "scores": [float(s) for s in result.scores],
        "weights": [float(w) for w in result.weights],
        "extra": dict(result.metrics),
    }
    if result.suspected is not None:  # the rule's own verdict
        found["suspected"] = _row_ids(result.suspected, node_ids)
    return found


def _decide(
    plan: RoundPlan,
    sent: SentModel,
    valid: ValidReplies,
    f: int,
    min_nodes: int,
) -> _Decision:
    """The rule's decision on the valid updates, or why there is none."""
    server_round = sent.server_round
    n = len(valid.node_ids)
    if n < min_nodes:
        message = (
            f"{n} valid replies < {min_nodes} needed by {plan.name} with f={f}; "
            "model unchanged"
        )
        log(logging.WARNING, "Round %d: %s", server_round, message)
        return _Decision(RoundStatus.BOUND_FAILED, message)
    decisions: dict[str, Any] = {}
    try:
        if plan.streams_mean:
            result = _streamed_mean(valid)
        else:
            device = plan.device
            weights = valid.weights
            result = plan.decide(
                RoundInput(
                    server_round=server_round,
                    updates=torch.from_numpy(valid.updates).to(device),
                    node_ids=valid.node_ids,
                    weights=(
                        None
                        if weights is None
                        else torch.tensor(weights, dtype=torch.float32, device=device)
                    ),
                    f=f,
                    global_flat=torch.from_numpy(sent.theta).to(device),
                    layout=sent.layout,
                )
            )
        aggregate = result.aggregate.detach().to("cpu", torch.float32).numpy()
        decisions = _decisions(result, valid.node_ids)
        if aggregate.shape != (sent.layout.d,):
            raise ValueError(
                f"aggregate has shape {aggregate.shape}, expected ({sent.layout.d},)"
            )
    except Exception as err:  # a rule failure keeps the model, never the server
        message = f"{type(err).__name__}: {err}; model unchanged"
        log(
            logging.ERROR,
            "Round %d: aggregation failed: %s",
            server_round,
            message,
            exc_info=True,
        )
        return _Decision(RoundStatus.AGGREGATION_FAILED, message, decisions)
    if result.no_update:
        # The rule decided not to move the model (e.g. FLTrust with zero trust):
        # its decisions are reported, the model (and momentum) stay as they are.
        message = f"{result.no_update}; model unchanged"
        log(logging.WARNING, "Round %d: %s", server_round, message)
        return _Decision(RoundStatus.NO_UPDATE, message, decisions)
    return _Decision(RoundStatus.OK, "", decisions, aggregate)


def run_robust_round(
    plan: RoundPlan,
    sent: SentModel,
    candidates: Sequence[Candidate],
    state: RoundState,
    absent: Mapping[int, MissingReason] | None = None,
) -> RoundOutcome:
    """Validate the replies, decide with ``plan``, step, and report.

    Never raises because of reply content: every problem becomes a rejected
    reply or a round status in the report.

    Parameters
    ----------
    plan : RoundPlan
        The budget, the bound, the rule's ``decide`` and the server step
        settings.
    sent : SentModel
        The model, recipients and round number of this round.
    candidates : Sequence[Candidate]
        The replies.
    state : RoundState
        Momentum and matrix storage from the previous round (not changed).
    absent : Mapping[int, MissingReason] or None
        Nodes the SuperLink reported missing, and why; any other node without a
        candidate is reported ``TIMED_OUT``.

    Returns
    -------
    RoundOutcome
        New arrays (or ``None``), the report, the valid replies' metrics and
        the next round's state.
    """
    t0 = time.perf_counter()
    server_round = sent.server_round
    # 1. validate
    valid = _validate(plan, sent, candidates, state, absent)
    if not plan.streams_mean:
        state = dataclasses.replace(state, buffer=valid.matrix)
    n = len(valid.node_ids)
    # 2. decide
    f = plan.budget(n)
    min_nodes = max(1, int(plan.bound(f)))
    suspected = _suspect(
        server_round, valid.matrix[:n], valid.node_ids, sampled=plan.streams_mean
    )
    decision = _decide(plan, sent, valid, f, min_nodes)
    status, message, arrays = decision.status, decision.message, None
    # 3. step
    if decision.aggregate is not None:
        step = server_step(
            theta=sent.arrays,
            layout=sent.layout,
            aggregate=decision.aggregate,
            lr=plan.lr,
            momentum=plan.momentum,
            buffer=state.momentum,
        )
        if step.theta is None:
            status = RoundStatus.NON_FINITE_RESULT
            message = "the new model would not be finite; model unchanged"
            log(logging.ERROR, "Round %d: %s", server_round, message)
        else:
            arrays = step.theta
            if plan.momentum > 0.0:
                state = dataclasses.replace(state, momentum=step.buffer)
    # 4. report
    report = RoundReport(
        server_round=server_round,
        status=status,
        message=message,
        f=f,
        min_nodes=min_nodes,
        num_sent=len(sent.node_ids),
        node_ids=valid.node_ids,
        partition_ids=valid.partition_ids,
        rejected=[(i, r.name) for i, r in valid.rejected],
        rejected_codes=[int(r) for _, r in valid.rejected],
        missing=[i for i, _ in valid.missing],
        missing_reasons=[r.name for _, r in valid.missing],
        missing_codes=[int(r) for _, r in valid.missing],
        **{"suspected": suspected, **decision.decisions},
    )
    report.seconds = time.perf_counter() - t0
    return RoundOutcome(arrays, report, valid.metrics, valid.weights, state)
