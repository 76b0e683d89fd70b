"""The one validation + update core shared by the Message-API and legacy strategies.

Both front ends turn their replies into :class:`Candidate` objects and call
:func:`run_robust_round`; everything after that (validation, the ``(n, d)``
update matrix, the Byzantine budget, the rule, the server step, the report) is
this module.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.supercore import log

from .model_layout import ArrayLike, ModelLayout, decode_arrayrecord, parse_npy_header
from .reply_validation import RejectReason, check_num_examples, decode_update_into
from .round_report import RoundReport, RoundStatus
from .suspicion import suspected_rows

if TYPE_CHECKING:
    from .robust_strategy import RobustStrategy


@dataclass
class SentModel:
    """What the server sent in one round: the model and its recipients.

    Attributes
    ----------
    server_round : int
        The round.
    record : ArrayRecord
        The ArrayRecord sent (returned unchanged when the round cannot update).
    layout : ModelLayout
        Keys, shapes, dtypes and flat offsets of ``record``.
    arrays : dict[str, numpy.ndarray]
        Zero-copy views of ``record``'s arrays.
    theta : numpy.ndarray
        ``(d,)`` float32 flat model (float arrays only).
    node_ids : tuple[int, ...]
        Nodes the instructions went to.
    message_types : dict[int, str]
        Message type sent to each node.
    headers : dict[str, bytes]
        ``.npy`` header bytes of each C-order sent array (validation fast path).
    """

    server_round: int
    record: ArrayRecord
    layout: ModelLayout
    arrays: dict[str, np.ndarray]
    theta: np.ndarray
    node_ids: tuple[int, ...] = ()
    message_types: dict[int, str] = field(default_factory=dict)
    headers: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_record(cls, server_round: int, record: ArrayRecord,
                    node_ids: Sequence[int] = (),
                    message_types: Mapping[int, str] | None = None) -> SentModel:
        """Decode (zero-copy) the model sent in ``server_round``."""
        layout, arrays = decode_arrayrecord(record)
        headers = {}
        for key, array in record.items():
            header = parse_npy_header(array.data)
            if not header.fortran_order:
                headers[key] = bytes(array.data[:header.offset])
        return cls(server_round, record, layout, arrays, layout.flatten(arrays),
                   tuple(node_ids), dict(message_types or {}), headers)


@dataclass
class Candidate:
    """One reply, reduced to what the core needs.

    Attributes
    ----------
    node_id : int
        Sender.
    arrays : Mapping[str, ArrayLike] or None
        The reply's model arrays.
    metrics : Mapping[str, Any] or None
        The reply's metrics.
    reason : RejectReason or None
        Set by the front end when the reply already failed a structural check.
    """

    node_id: int
    arrays: Mapping[str, ArrayLike] | None
    metrics: Mapping[str, Any] | None
    reason: RejectReason | None = None


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
    momentum : numpy.ndarray or None
        The new server momentum buffer (``None``: unchanged).
    buffer : numpy.ndarray or None
        The update matrix's storage, for the caller to pass to the next round.
    """

    arrays: dict[str, np.ndarray] | None
    report: RoundReport
    metrics: list[Mapping[str, Any]]
    weights: list[float] | None
    momentum: np.ndarray | None = None
    buffer: np.ndarray | None = None


def _reject(report: RoundReport, node_id: int, reason: RejectReason) -> None:
    report.rejected.append((int(node_id), reason.name))
    report.rejected_codes.append(int(reason))
    log(logging.WARNING, "Round %d: rejected reply from node %d: %s (code %d)",
        report.server_round, node_id, reason.name, int(reason))


def _row_ids(rows: Sequence[int], node_ids: Sequence[int]) -> list[int]:
    return [int(node_ids[r]) for r in rows]


def _suspect(report: RoundReport, updates: torch.Tensor) -> None:
    """Fill ``report.suspected`` (a diagnostic: never fails the round)."""
    try:
        report.suspected = _row_ids(suspected_rows(updates), report.node_ids)
    except Exception:  # pylint: disable=broad-except
        log(logging.WARNING, "Round %d: suspected-node-ids not computed",
            report.server_round, exc_info=True)


def run_robust_round(strategy: RobustStrategy, server_round: int, sent: SentModel,
                     candidates: Sequence[Candidate],
                     momentum: np.ndarray | None = None,
                     buffer: np.ndarray | None = None) -> RoundOutcome:
    """Validate replies, aggregate their updates with ``strategy`` and step.

    Never raises because of reply content: every problem becomes a rejected
    reply or a round status in the report.

    Parameters
    ----------
    strategy : RobustStrategy
        Supplies the budget (``resolve_f``), the bound (``min_nodes``), the rule
        (``aggregate_updates``), ``extra_round_metrics`` and the server step
        settings.
    server_round : int
        The round.
    sent : SentModel
        The model and recipients of this round.
    candidates : Sequence[Candidate]
        The replies.
    momentum : numpy.ndarray or None
        The server momentum buffer so far.
    buffer : numpy.ndarray or None
        A float32 matrix from an earlier round to write the updates into (reused
        when it has room: a fresh ``n × d`` allocation costs page faults every
        round). Its previous contents are overwritten.

    Returns
    -------
    RoundOutcome
        New arrays (or ``None``), the report and the valid replies' metrics.
    """
    t0 = time.perf_counter()
    layout = sent.layout
    report = RoundReport(server_round=server_round, num_sent=len(sent.node_ids))
    sent_ids = set(sent.node_ids)
    counts = Counter(c.node_id for c in candidates)
    replied = set(counts)
    report.missing = [i for i in sent.node_ids if i not in replied]

    pending: list[tuple[Candidate, float]] = []
    for cand in candidates:
        # Who sent it is judged first: a stranger's reply is UNEXPECTED_NODE
        # whatever it holds (unless the reply could not even be read).
        if cand.reason == RejectReason.MALFORMED:
            reason = cand.reason
        elif counts[cand.node_id] > 1:
            reason = RejectReason.DUPLICATE_NODE
        elif cand.node_id not in sent_ids:
            reason = RejectReason.UNEXPECTED_NODE
        else:
            reason = cand.reason
        weight = 1.0
        if reason is None and strategy.weighted_aggregation:
            reason, weight = check_num_examples(cand.metrics, strategy.weighted_by_key)
        if reason is None and cand.arrays is None:
            reason = RejectReason.MISSING_ARRAY_RECORD
        if reason is not None:
            _reject(report, cand.node_id, reason)
        else:
            pending.append((cand, weight))

    # One preallocated matrix; a rejected reply's row is reused by the next.
    if (buffer is not None and buffer.dtype == np.float32 and buffer.ndim == 2
            and buffer.shape[1] == layout.d and buffer.shape[0] >= len(pending)):
        matrix = buffer
    else:
        matrix = np.empty((len(pending), layout.d), dtype=np.float32)
    flat_sent = {k: v.reshape(-1) for k, v in sent.arrays.items()}
    valid: list[tuple[Candidate, float]] = []
    for cand, weight in pending:
        try:
            reason = decode_update_into(cand.arrays, layout, flat_sent,
                                        matrix[len(valid)], sent.headers)
        except Exception:  # client bytes must never crash the server
            log(logging.DEBUG, "decode failure", exc_info=True)
            reason = RejectReason.MALFORMED
        if reason is None:
            valid.append((cand, weight))
        else:
            _reject(report, cand.node_id, reason)

    n = len(valid)
    node_ids = [int(c.node_id) for c, _ in valid]
    report.node_ids = node_ids
    metrics = [c.metrics if c.metrics is not None else {} for c, _ in valid]
    weight_list = [w for _, w in valid] if strategy.weighted_aggregation else None
    outcome = RoundOutcome(None, report, metrics, weight_list, buffer=matrix)
    f = strategy.resolve_f(n)
    report.f = f
    report.min_nodes = max(1, int(strategy.min_nodes(f)))
    if n < report.min_nodes:
        _suspect(report, torch.from_numpy(matrix[:n]))
        report.status = RoundStatus.BOUND_FAILED
        report.message = (f"{n} valid replies < {report.min_nodes} needed by "
                          f"{type(strategy).__name__} with f={f}; model unchanged")
        log(logging.WARNING, "Round %d: %s", server_round, report.message)
        report.seconds = time.perf_counter() - t0
        return outcome

    device = strategy.torch_device
    updates = torch.from_numpy(matrix[:n]).to(device)
    theta = torch.from_numpy(sent.theta).to(device)
    weights = (torch.tensor(weight_list, dtype=torch.float32, device=device)
               if weight_list is not None else None)
    _suspect(report, updates)
    try:
        result = strategy.aggregate_updates(server_round, updates, node_ids, weights,
                                            f, theta)
        aggregate = result.aggregate.detach().to("cpu", torch.float32).numpy()
        report.selected = _row_ids(result.selected, node_ids)
        report.removed = _row_ids(result.removed, node_ids)
        report.scores = [float(s) for s in result.scores]
        report.weights = [float(w) for w in result.weights]
        report.extra = dict(strategy.extra_round_metrics(server_round))
        if aggregate.shape != (layout.d,):
            raise ValueError(f"aggregate has shape {aggregate.shape}, "
                             f"expected ({layout.d},)")
    except Exception as err:  # a rule failure keeps the model, never the server
        report.status = RoundStatus.AGGREGATION_FAILED
        report.message = f"{type(err).__name__}: {err}; model unchanged"
        log(logging.ERROR, "Round %d: aggregation failed: %s", server_round,
            report.message, exc_info=True)
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

    lr = strategy.server_learning_rate
    new_momentum = None
    with np.errstate(over="ignore", invalid="ignore"):
        if strategy.server_momentum > 0.0:
            if momentum is None or momentum.shape != aggregate.shape:
                new_momentum = aggregate.copy()
            else:
                new_momentum = strategy.server_momentum * momentum + aggregate
            step = new_momentum * np.float32(lr)
        else:
            step = aggregate * np.float32(lr) if lr != 1.0 else aggregate
        new_arrays: dict[str, np.ndarray] = dict(sent.arrays)
        finite = math.isfinite(float(np.add.reduce(step, dtype=np.float64)))
        for i, key, start, stop in layout.segments() if finite else ():
            old = sent.arrays[key]
            new = old + step[start:stop].reshape(layout.shapes[i]).astype(
                old.dtype, copy=False)
            if not np.isfinite(new).all():
                finite = False
                break
            new_arrays[key] = new
    if not finite:
        report.status = RoundStatus.NON_FINITE_RESULT
        report.message = "the new model would not be finite; model unchanged"
        log(logging.ERROR, "Round %d: %s", server_round, report.message)
    else:
        report.status = RoundStatus.OK
        outcome.arrays = new_arrays
        outcome.momentum = new_momentum
    report.seconds = time.perf_counter() - t0
    return outcome
