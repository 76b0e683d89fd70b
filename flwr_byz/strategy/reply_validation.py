"""Per-reply validation: every client reply is checked on its own.

What was sent (:class:`SentModel`), a reply reduced to what the checks need
(:class:`Candidate`, from a Message by :func:`message_to_candidate`), and the
round's validation (:func:`validate_replies`): the one place that decides which
replies enter the update matrix.

A reply that fails a check is excluded from the round and reported with its
node id and a :class:`RejectReason`. MetricRecords cannot hold strings, so the
round's MetricRecord carries the integer code (``"rejected-reasons"``) and the
log and :class:`~flwr_byz.strategy.round_report.RoundReport` carry the name.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore import log

from flwr_byz.records import IDENTITY_RECORD

from .finiteness import all_finite
from .model_layout import (
    NUMPY_STYPE,
    ArrayLike,
    ModelLayout,
    decode_arrayrecord,
    parse_npy_header,
)
from .round_report import MissingReason

#: Largest ``num-examples`` accepted when weighting is on; beyond this a single
#: client could dominate a weighted aggregate by what it claims about itself.
MAX_NUM_EXAMPLES = 2**31

# Δ is written and checked in blocks small enough to stay in cache, so the
# finiteness check costs no extra pass over memory.
_BLOCK = 1 << 17
# Small arrays are checked together once this many values are written since the
# last check: few calls per reply, and the values still in cache when read.
_CHECK = 1 << 14


class RejectReason(IntEnum):
    """Why a reply was excluded from a round (integer code in MetricRecords).

    ====  ======================  ===============================================
    code  name                    the reply ...
    ====  ======================  ===============================================
    1     ERROR_REPLY             carries an error instead of content
    2     UNEXPECTED_NODE         comes from a node not sent to this round
    3     DUPLICATE_NODE          shares its node id with another reply (all of
                                  that node's replies are rejected)
    4     WRONG_MESSAGE_TYPE      has a message type other than the one sent
    5     MISSING_ARRAY_RECORD    has no ArrayRecord
    6     EXTRA_ARRAY_RECORD      has more than one ArrayRecord
    7     MISSING_METRIC_RECORD   has no MetricRecord
    8     EXTRA_METRIC_RECORD     has more than one MetricRecord
    9     MISSING_KEYS            lacks arrays the global model has
    10    EXTRA_KEYS              has arrays the global model does not have
    11    WRONG_STYPE             has an array not serialised as numpy.ndarray
    12    WRONG_DTYPE             has an array whose dtype differs from the sent
                                  one (declared or in the .npy header)
    13    WRONG_SHAPE             has an array whose shape differs from the sent
                                  one (declared or in the .npy header)
    14    WRONG_BYTE_LENGTH       has an array whose bytes are not a well-formed
                                  .npy payload of the declared size
    15    NON_FINITE              has a NaN/inf value
    16    MISSING_NUM_EXAMPLES    lacks the weighting key (weighting on only)
    17    INVALID_NUM_EXAMPLES    has a weighting value that is a list, not
                                  positive, not finite or above
                                  ``MAX_NUM_EXAMPLES`` (weighting on only)
    18    MALFORMED               failed in a way no other code describes
    19    UPDATE_OVERFLOW         has finite values whose update ``w − θ_t``
                                  is not representable in float32 (beyond
                                  ±3.4e38: both far apart and near that limit)
    20    STALE_REPLY             answers no instruction this round sent to its
                                  node (an earlier round's, or another node's)
    ====  ======================  ===============================================

    A finite update is never rejected for its size: every rule aggregates any
    finite float32 matrix to a finite result and keeps its guarantee (see
    :mod:`flwr_byz.aggregation.distances`), so a huge update is decided by the
    rule — removed by FABA, outvoted by Krum — in the round's diagnostics.
    """

    ERROR_REPLY = 1
    UNEXPECTED_NODE = 2
    DUPLICATE_NODE = 3
    WRONG_MESSAGE_TYPE = 4
    MISSING_ARRAY_RECORD = 5
    EXTRA_ARRAY_RECORD = 6
    MISSING_METRIC_RECORD = 7
    EXTRA_METRIC_RECORD = 8
    MISSING_KEYS = 9
    EXTRA_KEYS = 10
    WRONG_STYPE = 11
    WRONG_DTYPE = 12
    WRONG_SHAPE = 13
    WRONG_BYTE_LENGTH = 14
    NON_FINITE = 15
    MISSING_NUM_EXAMPLES = 16
    INVALID_NUM_EXAMPLES = 17
    MALFORMED = 18
    UPDATE_OVERFLOW = 19
    STALE_REPLY = 20


def check_num_examples(
    metrics: Mapping[str, Any] | None, key: str
) -> tuple[RejectReason | None, float]:
    """Check the self-reported weight of a reply.

    Parameters
    ----------
    metrics : Mapping[str, Any] or None
        The reply's metrics.
    key : str
        The weighting key (``weighted_by_key``).

    Returns
    -------
    tuple[RejectReason or None, float]
        ``(None, value)`` when acceptable, else the reason and ``nan``.
    """
    if metrics is None or key not in metrics:
        return RejectReason.MISSING_NUM_EXAMPLES, math.nan
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return RejectReason.INVALID_NUM_EXAMPLES, math.nan
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= MAX_NUM_EXAMPLES):
        return RejectReason.INVALID_NUM_EXAMPLES, math.nan
    return None, value


def check_array_structure(
    arrays: Mapping[str, ArrayLike], layout: ModelLayout
) -> RejectReason | None:
    """Check keys, stype, declared dtype and declared shape against the sent model.

    Parameters
    ----------
    arrays : Mapping[str, ArrayLike]
        The reply's arrays (an ArrayRecord).
    layout : ModelLayout
        Layout of the model sent this round.

    Returns
    -------
    RejectReason or None
        The first problem found, or ``None``.
    """
    return _read_entries(arrays, layout)[0]


def _read_entries(
    arrays: Mapping[str, ArrayLike], layout: ModelLayout
) -> tuple[RejectReason | None, list[ArrayLike]]:
    """:func:`check_array_structure`, and the reply's arrays in layout order.

    Each entry is read once: a Flower ArrayRecord lookup is not a plain dict's.
    """
    keys = tuple(arrays)
    if keys == layout.keys:  # the usual case: the sent keys, in the sent order
        values = list(arrays.values())
    else:
        entries = {key: arrays[key] for key in keys}
        if len(entries) != len(layout.keys) or entries.keys() != layout.key_set:
            if not layout.key_set <= entries.keys():
                return RejectReason.MISSING_KEYS, []
            return RejectReason.EXTRA_KEYS, []
        values = [entries[key] for key in layout.keys]
    for array, shape, dtype_name in zip(
        values, layout.shapes, layout.dtype_names, strict=True
    ):
        if array.stype != NUMPY_STYPE:
            return RejectReason.WRONG_STYPE, []
        if array.dtype != dtype_name:
            return RejectReason.WRONG_DTYPE, []
        declared = array.shape
        if not isinstance(declared, tuple | list) or tuple(declared) != shape:
            return RejectReason.WRONG_SHAPE, []
        if not isinstance(array.data, bytes | bytearray | memoryview):
            return RejectReason.WRONG_BYTE_LENGTH, []
    return None, values


def _payload(
    array: ArrayLike,
    shape: tuple[int, ...],
    dtype: np.dtype,
    known_header: bytes | None = None,
) -> tuple[RejectReason | None, np.ndarray | None]:
    """Zero-copy view of an array's values, checked against the sent dtype/shape.

    ``known_header`` is the C-order ``.npy`` header of the sent array: a reply
    that starts with exactly those bytes has the sent dtype and shape, so the
    (slow, ``literal_eval``-based) header parser is skipped.
    """
    data = array.data
    count = math.prod(shape)
    if known_header is not None and data[: len(known_header)] == known_header:
        offset, fortran_order = len(known_header), False
    else:
        try:
            header = parse_npy_header(data)
        except (ValueError, TypeError, SyntaxError, EOFError, OverflowError):
            return RejectReason.WRONG_BYTE_LENGTH, None
        if header.dtype != dtype:
            return RejectReason.WRONG_DTYPE, None
        if header.shape != shape:
            return RejectReason.WRONG_SHAPE, None
        offset, fortran_order = header.offset, header.fortran_order
    if len(data) != offset + count * dtype.itemsize:
        return RejectReason.WRONG_BYTE_LENGTH, None
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if fortran_order and len(shape) > 1:
        # Column-major bytes: re-read them in C order (a copy, rare in practice).
        flat = np.ascontiguousarray(flat.reshape(shape, order="F")).reshape(-1)
    return None, flat


def decode_update_into(
    arrays: Mapping[str, ArrayLike],
    layout: ModelLayout,
    theta: Mapping[str, np.ndarray],
    out: np.ndarray,
    headers: Mapping[str, bytes] | None = None,
) -> RejectReason | None:
    """Validate a reply's arrays and write its update ``w - theta`` into ``out``.

    Reads every array through a zero-copy view of its ``.npy`` bytes; the only
    pass over the values is the subtraction, and finiteness is checked on
    blocks of the row while they are in cache (one check for many small arrays).

    Parameters
    ----------
    arrays : Mapping[str, ArrayLike]
        The reply's ArrayRecord.
    layout : ModelLayout
        Layout of the model sent this round.
    theta : Mapping[str, numpy.ndarray]
        The arrays sent this round, flattened (1-D, original dtype), so an
        update of a float64 model is exact before its cast to float32.
    out : numpy.ndarray
        ``(d,)`` float32 row to fill with the update (garbage if rejected).
    headers : Mapping[str, bytes] or None
        C-order ``.npy`` headers of the sent arrays (a fast path; optional).

    Returns
    -------
    RejectReason or None
        Why the reply is rejected, or ``None`` if ``out`` now holds its update.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _decode(arrays, layout, theta, out, headers or {})


def _decode(
    arrays: Mapping[str, ArrayLike],
    layout: ModelLayout,
    theta: Mapping[str, np.ndarray],
    out: np.ndarray,
    headers: Mapping[str, bytes],
) -> RejectReason | None:
    """:func:`decode_update_into` under the caller's ``np.errstate`` (one per
    round, not one per reply)."""
    reason, entries = _read_entries(arrays, layout)
    if reason is not None:
        return reason
    # Integer arrays are not aggregated, but a malformed one still marks the
    # reply as malformed.
    for i, key in enumerate(layout.keys):
        if layout.offsets[i] < 0:
            reason, _ = _payload(
                entries[i], layout.shapes[i], layout.dtypes[i], headers.get(key)
            )
            if reason is not None:
                return reason
    sources: list[tuple[int, np.ndarray]] = []
    checked = 0  # out[:checked] is known to be finite
    for i, key, start, stop in layout.segments():
        dtype, header = layout.dtypes[i], headers.get(key)
        data = entries[i].data
        if (
            header is not None
            and len(data) == len(header) + (stop - start) * dtype.itemsize
            and data[: len(header)] == header
        ):  # the sent header and size: no parsing (the usual case)
            src = np.frombuffer(data, dtype, stop - start, len(header))
        else:
            reason, src = _payload(entries[i], layout.shapes[i], dtype, header)
            if reason is not None:
                return reason
        sources.append((start, src))
        sent = theta[key]
        if stop - start <= _BLOCK:  # most arrays: one call (ufuncs cast same_kind)
            np.subtract(src, sent, out[start:stop])
            if stop - checked >= _CHECK:
                if not all_finite(out[checked:stop]):
                    return _non_finite_reason(sources, checked, stop)
                checked = stop
            continue
        for a in range(0, stop - start, _BLOCK):
            b = min(a + _BLOCK, stop - start)
            np.subtract(src[a:b], sent[a:b], out[start + a : start + b])
            if start + b - checked >= _CHECK:
                if not all_finite(out[checked : start + b]):
                    return _non_finite_reason(sources, checked, start + b)
                checked = start + b
    if checked < layout.d and not all_finite(out[checked : layout.d]):
        return _non_finite_reason(sources, checked, layout.d)
    return None


#: Largest model (values) decoded by :func:`_decode_small`: its row stays in
#: cache between the copy and the subtraction.
_SMALL_ROW = 1 << 17


@dataclass(frozen=True)
class _SentPlan:
    """What a reply serialised as the sent model is compared with (one per round).

    Attributes
    ----------
    arrays : tuple[tuple[tuple[int, ...], str, bytes, int, bool], ...]
        Per sent array, in key order: its shape, dtype name, C-order ``.npy``
        header, the byte length of a well-formed payload, and whether it is a
        float array (a part of the update).
    floats : tuple[tuple[int, int, int], ...]
        Per float array, in layout order: the length of its header and the
        span ``[start, stop)`` of its values in the update's row.
    """

    arrays: tuple[tuple[tuple[int, ...], str, bytes, int, bool], ...]
    floats: tuple[tuple[int, int, int], ...]


def _sent_plan(sent: SentModel) -> _SentPlan | None:
    """The :class:`_SentPlan` of a float32 model whose arrays are all C-order,
    else ``None`` (computed once per round)."""
    if "_sent_plan" in sent.__dict__:
        return sent.__dict__["_sent_plan"]
    layout, plan = sent.layout, None
    f32 = np.dtype(np.float32)
    if (
        layout.d > 0
        and all(k in sent.headers for k in layout.keys)
        and all(layout.dtypes[i] == f32 for i, *_ in layout.segments())
    ):
        arrays = tuple(
            (
                shape,
                name,
                sent.headers[key],
                len(sent.headers[key]) + math.prod(shape) * dtype.itemsize,
                offset >= 0,
            )
            for key, shape, name, dtype, offset in zip(
                layout.keys,
                layout.shapes,
                layout.dtype_names,
                layout.dtypes,
                layout.offsets,
                strict=True,
            )
        )
        floats = tuple(
            (len(sent.headers[key]), start, stop)
            for _, key, start, stop in layout.segments()
        )
        plan = _SentPlan(arrays, floats)
    sent.__dict__["_sent_plan"] = plan
    return plan


def _sent_like_data(
    arrays: Mapping[str, ArrayLike], keys: tuple[str, ...], plan: _SentPlan
) -> list[bytes] | None:
    """The ``.npy`` bytes of the float arrays of a reply serialised as the sent
    model, in layout order: the sent keys in the sent order, every array
    declared and serialised exactly as the sent one (same stype, dtype, shape,
    ``.npy`` header bytes and length, ``bytes`` data). ``None`` decides nothing:
    :func:`_decode` then reads the reply again and finds its reason (or accepts
    it: a reordered or re-serialised reply)."""
    if tuple(arrays) != keys:
        return None
    found = []
    for array, (shape, name, header, size, is_float) in zip(
        arrays.values(), plan.arrays, strict=True
    ):
        data = array.data
        if not (
            array.stype == NUMPY_STYPE
            and array.dtype == name
            and type(array.shape) is tuple
            and array.shape == shape
            and type(data) is bytes
            and len(data) == size
            and data.startswith(header)
        ):
            return None
        if is_float:
            found.append(data)
    return found


def _value_views(found: list[bytes], plan: _SentPlan) -> list[np.ndarray]:
    """Zero-copy float32 views of the values of :func:`_sent_like_data`."""
    f32 = np.float32
    return [
        np.frombuffer(data, f32, stop - start, skip)
        for data, (skip, start, stop) in zip(found, plan.floats, strict=True)
    ]


def _decode_small(
    arrays: Mapping[str, ArrayLike],
    keys: tuple[str, ...],
    plan: _SentPlan,
    theta: np.ndarray,
    out: np.ndarray,
) -> bool:
    """The usual reply of a small float32 model, decoded with few calls.

    ``True`` when :func:`_sent_like_data` reads the reply and its update is
    finite: ``out`` then holds ``w − θ`` (each payload's bytes copied into
    ``out`` as they are, ``θ`` subtracted in one call, float32 as
    :func:`_decode` computes it, bit for bit). ``False`` decides nothing, as
    there.
    """
    found = _sent_like_data(arrays, keys, plan)
    if found is None:
        return False
    _copy_values(found, plan, out)
    np.subtract(out, theta, out)
    return all_finite(out)


def _copy_values(found: list[bytes], plan: _SentPlan, out: np.ndarray) -> None:
    """The values of :func:`_sent_like_data` copied into the float32 row ``out``.

    A byte copy: the payloads hold the sent dtype, native float32 (their
    headers are the sent ones, byte order included), which is ``out``'s; no
    array is made per payload.
    """
    row = memoryview(out).cast("B")
    for data, (skip, start, stop) in zip(found, plan.floats, strict=True):
        row[4 * start : 4 * stop] = memoryview(data)[skip:]


def _decode_or_malformed(
    cand: Candidate,
    sent: SentModel,
    flat_sent: Mapping[str, np.ndarray],
    out: np.ndarray,
) -> RejectReason | None:
    """:func:`_decode` of a candidate; whatever its bytes make fail is MALFORMED.

    The usual reply of a small float32 model takes :func:`_decode_small`; any
    other reply, or one it does not accept, is decoded by :func:`_decode`.
    """
    plan = _sent_plan(sent) if sent.layout.d <= _SMALL_ROW else None
    if plan is not None:
        try:
            if _decode_small(cand.arrays, sent.layout.keys, plan, sent.theta, out):
                return None
        except Exception:  # pylint: disable=broad-except
            pass  # :func:`_decode` finds the reason
    try:
        return _decode(cand.arrays, sent.layout, flat_sent, out, sent.headers)
    except Exception:  # client bytes must never crash the server
        log(logging.DEBUG, "decode failure", exc_info=True)
        return RejectReason.MALFORMED


def _non_finite_reason(
    sources: Sequence[tuple[int, np.ndarray]], lo: int, hi: int
) -> RejectReason:
    """Why ``out[lo:hi]`` holds a NaN/inf: the reply's own values, or their
    difference from the sent model overflowing float32."""
    for start, src in sources:
        a, b = max(lo - start, 0), min(hi - start, src.size)
        if a < b and not np.isfinite(src[a:b]).all():
            return RejectReason.NON_FINITE
    return RejectReason.UPDATE_OVERFLOW


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
    def from_record(
        cls,
        server_round: int,
        record: ArrayRecord,
        node_ids: Sequence[int] = (),
        message_types: Mapping[int, str] | None = None,
    ) -> SentModel:
        """Decode (zero-copy) the model sent in ``server_round``."""
        layout, arrays = decode_arrayrecord(record)
        headers = {}
        for key, array in record.items():
            header = parse_npy_header(array.data)
            if not header.fortran_order:
                headers[key] = bytes(array.data[: header.offset])
        return cls(
            server_round,
            record,
            layout,
            arrays,
            layout.flatten(arrays),
            tuple(node_ids),
            dict(message_types or {}),
            headers,
        )


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
    partition_id : int
        The partition the node says it holds (``byzantine_mod`` adds it in
        simulation, :data:`IDENTITY_RECORD`); ``-1`` when unknown. Diagnostics
        only: no rule reads it.
    """

    node_id: int
    arrays: Mapping[str, ArrayLike] | None
    metrics: Mapping[str, Any] | None
    reason: RejectReason | None = None
    partition_id: int = -1


def message_to_candidate(
    msg: Message, sent: SentModel, destinations: Mapping[str, int] | None = None
) -> Candidate:
    """Reduce a reply Message to a :class:`Candidate`, checking its structure.

    Parameters
    ----------
    msg : Message
        A train reply.
    sent : SentModel
        What was sent this round (for the expected message type).
    destinations : Mapping[str, int] or None
        :func:`instruction_destinations` of this round's instructions. When
        given (non-empty), a reply must answer one of them sent to its own
        node, else it is ``STALE_REPLY``.

    Returns
    -------
    Candidate
        With ``reason`` set when the reply is stale, an error or malformed.
    """
    node_id = int(msg.metadata.src_node_id)
    if destinations and (
        destinations.get(str(msg.metadata.reply_to_message_id)) != node_id
    ):
        return Candidate(node_id, None, None, RejectReason.STALE_REPLY)
    if msg.has_error() or not msg.has_content():
        return Candidate(node_id, None, None, RejectReason.ERROR_REPLY)
    expected_type = sent.message_types.get(node_id)
    if expected_type is not None and msg.metadata.message_type != expected_type:
        return Candidate(node_id, None, None, RejectReason.WRONG_MESSAGE_TYPE)
    # One pass over the records: Flower's ``array_records`` & co. each build a
    # new checked dictionary per call.
    array_records, metric_records, identity = [], [], None
    for key, record in msg.content.items():
        if isinstance(record, ArrayRecord):
            array_records.append(record)
        elif isinstance(record, MetricRecord):
            metric_records.append(record)
        elif key == IDENTITY_RECORD and isinstance(record, ConfigRecord):
            identity = record
    reason = None
    if not array_records:
        reason = RejectReason.MISSING_ARRAY_RECORD
    elif len(array_records) > 1:
        reason = RejectReason.EXTRA_ARRAY_RECORD
    elif not metric_records:
        reason = RejectReason.MISSING_METRIC_RECORD
    elif len(metric_records) > 1:
        reason = RejectReason.EXTRA_METRIC_RECORD
    if reason is not None:
        return Candidate(node_id, None, None, reason)
    return Candidate(
        node_id,
        array_records[0],
        metric_records[0],
        partition_id=_claimed_partition(identity),
    )


def _claimed_partition(record: ConfigRecord | None) -> int:
    try:
        value = None if record is None else record.get("partition-id")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return int(value)
    except Exception:  # pylint: disable=broad-except
        pass
    return -1


@dataclass
class ValidReplies:
    """What validation found in a round's replies, with the valid updates as a matrix.

    Attributes
    ----------
    matrix : numpy.ndarray
        ``(rows, d)`` float32 storage; its first ``len(node_ids)`` rows are the
        valid updates ``w_i − θ_t`` in reply order (the rest is scratch).
    node_ids : list[int]
        Node id of each valid row.
    metrics : list[Mapping[str, Any]]
        The valid replies' metrics (row order).
    weights : list[float] or None
        Their validated weights when weighting is on.
    partition_ids : list[int]
        Partition each valid row's node says it holds (``-1``: unknown).
    rejected : list[tuple[int, RejectReason]]
        ``(node id, reason)`` of every reply excluded, in reply order.
    missing : list[tuple[int, MissingReason]]
        ``(node id, reason)`` of every node sent to without a reply of this
        round, in the order the instructions went out.
    """

    matrix: np.ndarray
    node_ids: list[int]
    metrics: list[Mapping[str, Any]]
    weights: list[float] | None
    partition_ids: list[int] = field(default_factory=list)
    rejected: list[tuple[int, RejectReason]] = field(default_factory=list)
    missing: list[tuple[int, MissingReason]] = field(default_factory=list)

    @property
    def updates(self) -> np.ndarray:
        """``(n, d)`` view of the valid rows."""
        return self.matrix[: len(self.node_ids)]


def _reject(
    rejected: list[tuple[int, RejectReason]],
    server_round: int,
    node_id: int,
    reason: RejectReason,
) -> None:
    rejected.append((int(node_id), reason))
    log(
        logging.WARNING,
        "Round %d: rejected reply from node %d: %s (code %d)",
        server_round,
        node_id,
        reason.name,
        int(reason),
    )


@dataclass
class _Screened:
    """:func:`_screen`'s findings: the replies to decode, the rejected, the missing."""

    pending: list[tuple[Candidate, float]]
    rejected: list[tuple[int, RejectReason]]
    missing: list[tuple[int, MissingReason]]


def _screen(
    sent: SentModel,
    candidates: Sequence[Candidate],
    weighted_by: str | None,
    absent: Mapping[int, MissingReason] | None,
) -> _Screened:
    """Who sent what: the missing nodes, the replies (with their weights) whose
    sender, structure and weight pass, and every other reply, rejected."""
    sent_ids = set(sent.node_ids)
    # A stale reply is no reply of this round: it neither answers for its node
    # nor makes the node's own reply a duplicate.
    counts = Counter(
        c.node_id for c in candidates if c.reason != RejectReason.STALE_REPLY
    )
    absent = absent or {}
    missing = [
        (i, absent.get(i, MissingReason.TIMED_OUT))
        for i in sent.node_ids
        if i not in counts
    ]
    for node_id, reason in missing:
        log(
            logging.WARNING,
            "Round %d: no reply from node %d: %s (code %d)",
            sent.server_round,
            node_id,
            reason.name,
            int(reason),
        )

    found = _Screened([], [], missing)
    for cand in candidates:
        # Who sent it is judged first: a stranger's reply is UNEXPECTED_NODE
        # whatever it holds (unless the reply could not even be read).
        if cand.reason in (RejectReason.MALFORMED, RejectReason.STALE_REPLY):
            reason = cand.reason
        elif counts[cand.node_id] > 1:
            reason = RejectReason.DUPLICATE_NODE
        elif cand.node_id not in sent_ids:
            reason = RejectReason.UNEXPECTED_NODE
        else:
            reason = cand.reason
        weight = 1.0
        if reason is None and weighted_by is not None:
            reason, weight = check_num_examples(cand.metrics, weighted_by)
        if reason is None and cand.arrays is None:
            reason = RejectReason.MISSING_ARRAY_RECORD
        if reason is not None:
            _reject(found.rejected, sent.server_round, cand.node_id, reason)
        else:
            found.pending.append((cand, weight))
    return found


def _found(
    cls: type[ValidReplies],
    matrix: np.ndarray,
    valid: list[tuple[Candidate, float]],
    weighted: bool,
    screened: _Screened,
    **extra: Any,
) -> ValidReplies:
    """The :class:`ValidReplies` (or subclass) of the decoded ``valid`` replies."""
    return cls(
        matrix,
        [int(c.node_id) for c, _ in valid],
        [c.metrics if c.metrics is not None else {} for c, _ in valid],
        [w for _, w in valid] if weighted else None,
        [int(c.partition_id) for c, _ in valid],
        screened.rejected,
        screened.missing,
        **extra,
    )


def validate_replies(
    sent: SentModel,
    candidates: Sequence[Candidate],
    *,
    weighted_by: str | None,
    buffer: np.ndarray | None = None,
    absent: Mapping[int, MissingReason] | None = None,
) -> ValidReplies:
    """Check every reply on its own and write the valid updates into one matrix.

    Never raises because of reply content: a reply that fails is excluded and
    returned in ``rejected``; every node sent to without a reply is returned in
    ``missing``.

    Parameters
    ----------
    sent : SentModel
        The model and recipients of this round.
    candidates : Sequence[Candidate]
        The replies.
    weighted_by : str or None
        Metric key of the reply weight when weighting is on (checked per reply),
        ``None`` for unweighted aggregation.
    buffer : numpy.ndarray or None
        A float32 matrix from an earlier round to write the updates into (reused
        when it has room: a fresh ``n × d`` allocation costs page faults every
        round). Its previous contents are overwritten.
    absent : Mapping[int, MissingReason] or None
        Why a node has no reply, where the SuperLink said so (see
        :func:`attribute_replies`); every other node without a reply is
        ``TIMED_OUT``.
    """
    layout = sent.layout
    screened = _screen(sent, candidates, weighted_by, absent)
    pending = screened.pending
    # One preallocated matrix; a rejected reply's row is reused by the next.
    if (
        buffer is not None
        and buffer.dtype == np.float32
        and buffer.ndim == 2
        and buffer.shape[1] == layout.d
        and buffer.shape[0] >= len(pending)
    ):
        matrix = buffer
    else:
        matrix = np.empty((len(pending), layout.d), dtype=np.float32)
    flat_sent = {k: v.reshape(-1) for k, v in sent.arrays.items()}
    valid: list[tuple[Candidate, float]] = []
    with np.errstate(over="ignore", invalid="ignore"):
        for cand, weight in pending:
            reason = _decode_or_malformed(cand, sent, flat_sent, matrix[len(valid)])
            if reason is None:
                valid.append((cand, weight))
            else:
                _reject(screened.rejected, sent.server_round, cand.node_id, reason)
    return _found(ValidReplies, matrix, valid, weighted_by is not None, screened)


@dataclass
class AveragedReplies(ValidReplies):
    """Valid replies averaged as they were decoded (:func:`average_replies`).

    ``matrix`` holds only the requested columns of each valid update (the
    suspicion diagnostic's sample), never the whole ``(n, d)`` matrix.

    Attributes
    ----------
    mean : numpy.ndarray or None
        ``(d,)`` float32 (weighted) mean of the valid updates; ``None`` when no
        reply is valid.
    """

    mean: np.ndarray | None = None


@dataclass(frozen=True)
class _SummedAsSent:
    """:func:`average_replies`' few-call path (one per round, for a finite sent
    float32 model).

    A reply serialised as the sent model (:func:`_sent_like_data`) whose
    values square and sum finitely in float32 is valid: each value is then
    below ``√max`` (about 1.8e19), less than half a unit in the last place of
    float32's largest values, so ``w − θ`` rounds within range for any finite
    ``θ``. Such a reply is added to the sum as sent, ``w``; only its suspicion
    sample is decoded, ``w − θ`` there, as the exact decoder writes it, bit for
    bit. Any other reply is left to the exact decoder."""

    keys: tuple[str, ...]
    plan: _SentPlan
    theta: np.ndarray
    columns: np.ndarray | None
    theta_sample: np.ndarray
    picks: tuple[tuple[int, np.ndarray, int, int], ...]
    row: np.ndarray | None

    @classmethod
    def of(cls, sent: SentModel, columns: np.ndarray | None) -> _SummedAsSent | None:
        """The path for this round, or ``None`` where it does not apply."""
        plan = _sent_plan(sent)
        theta = sent.theta
        with np.errstate(over="ignore", invalid="ignore"):
            if plan is None or not all_finite(theta):
                return None
        picks = []
        if columns is not None:
            # Sample columns ascending: each array's share is one run of them.
            for k, (_, start, stop) in enumerate(plan.floats):
                a, b = (int(i) for i in np.searchsorted(columns, [start, stop]))
                if a < b:
                    picks.append((k, columns[a:b] - start, a, b))
        # A small model is copied into one row, in cache, and read there in a
        # few calls; a large one is read in its payloads, without that copy.
        small = sent.layout.d <= _SMALL_ROW
        return cls(
            keys=sent.layout.keys,
            plan=plan,
            theta=theta,
            columns=columns,
            theta_sample=theta if columns is None else theta[columns],
            picks=tuple(picks),
            row=np.empty(sent.layout.d, dtype=np.float32) if small else None,
        )

    def add(
        self, cand: Candidate, total: np.ndarray, weight: float, dest: np.ndarray
    ) -> bool:
        """Add the reply ``w`` (times ``weight`` unless it is 1) to ``total`` and
        write its sample of ``w − θ`` into ``dest``; ``False`` (nothing written)
        when the reply is not for this path."""
        row = self.row
        try:
            found = _sent_like_data(cand.arrays, self.keys, self.plan)
            if found is not None and row is not None:
                _copy_values(found, self.plan, row)
        except Exception:  # pylint: disable=broad-except
            return False  # the exact decoder finds the reason
        if found is None:
            return False
        if row is not None:
            if not math.isfinite(float(np.dot(row, row))):
                return False
            parts = [(row, 0, row.size)]
        else:
            payloads = _value_views(found, self.plan)
            if not all(math.isfinite(float(np.dot(p, p))) for p in payloads):
                return False
            spans = self.plan.floats
            parts = [(p, a, b) for p, (_, a, b) in zip(payloads, spans, strict=True)]
        # The sample of w − θ, as the exact decoder writes it.
        if row is not None:
            if self.columns is None:
                np.copyto(dest, row)
            else:
                np.take(row, self.columns, out=dest)
        elif self.columns is None:
            np.concatenate(payloads, out=dest)
        else:
            for k, index, a, b in self.picks:
                np.take(payloads[k], index, out=dest[a:b])
        np.subtract(dest, self.theta_sample, out=dest)
        for values, start, stop in parts:
            part = total[start:stop]
            if weight == 1.0:
                np.add(part, values, out=part)
            else:
                part += values.astype(np.float64) * weight
        return True


def average_replies(
    sent: SentModel,
    candidates: Sequence[Candidate],
    *,
    weighted_by: str | None,
    columns: np.ndarray | None,
    absent: Mapping[int, MissingReason] | None = None,
) -> AveragedReplies:
    """:func:`validate_replies` for a plain (weighted) mean, in one streaming pass.

    Each reply is validated and added to a float64 sum at once: memory stays
    ``O(d)`` however many replies arrive (Flower's ``FedAvg`` streams likewise),
    and the float64 sum neither overflows nor loses the small updates of a large
    model. The sum is of the replies ``w`` themselves, and ``θ`` is subtracted
    once from their mean: a reply serialised as the sent float32 model is added
    as sent (:class:`_SummedAsSent`), any other is decoded as
    :func:`validate_replies` decodes it, into one scratch row, and added back as
    that update plus ``θ``. The replies are judged as :func:`validate_replies`
    judges them.

    Parameters
    ----------
    columns : numpy.ndarray or None
        Columns of each valid update to keep in ``matrix`` (``None``: all).
    sent, candidates, weighted_by, absent
        As in :func:`validate_replies`.
    """
    layout = sent.layout
    screened = _screen(sent, candidates, weighted_by, absent)
    pending = screened.pending
    width = layout.d if columns is None else len(columns)
    sample = np.empty((len(pending), width), dtype=np.float32)
    row = np.empty(layout.d, dtype=np.float32)
    # The sum of the replies themselves, w_i; θ is subtracted once from their
    # mean (a reply decoded as w_i − θ is added back as that plus θ).
    total = np.zeros(layout.d, dtype=np.float64)
    flat_sent = {k: v.reshape(-1) for k, v in sent.arrays.items()}
    summed = _SummedAsSent.of(sent, columns)
    valid: list[tuple[Candidate, float]] = []
    with np.errstate(over="ignore", invalid="ignore"):
        for cand, weight in pending:
            dest = sample[len(valid)]
            if summed is not None and summed.add(cand, total, weight, dest):
                valid.append((cand, weight))
                continue
            reason = _decode_or_malformed(cand, sent, flat_sent, row)
            if reason is not None:
                _reject(screened.rejected, sent.server_round, cand.node_id, reason)
                continue
            dest[:] = row if columns is None else row[columns]
            if weighted_by is None:
                total += row
                total += sent.theta
            else:
                # The weight is applied in float64: no float32 product overflows.
                total += (row.astype(np.float64) + sent.theta) * weight
            valid.append((cand, weight))
    mean = None
    if valid:
        weight_sum = float(sum(w for _, w in valid)) if weighted_by else len(valid)
        np.divide(total, weight_sum, out=total)
        np.subtract(total, sent.theta, out=total)
        # A mean of float32 updates lies within their range: only float64
        # rounding at its very edge can round past it, and is then clamped.
        mean = np.empty(layout.d, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(mean, total, casting="same_kind")
            finite = all_finite(mean)
        if not finite:
            top = float(np.finfo(np.float32).max)
            mean = np.clip(total, -top, top).astype(np.float32)
    return _found(
        AveragedReplies,
        sample[: len(valid)],
        valid,
        weighted_by is not None,
        screened,
        mean=mean,
    )


def instruction_destinations(instructions: Sequence[Message]) -> dict[str, int]:
    """Message id -> destination node id of the instructions a grid pushed.

    A grid sets each Message's id when it pushes it, so call this after
    ``send_and_receive``; instructions without an id are left out.
    """
    found: dict[str, int] = {}
    for msg in instructions:
        try:
            message_id = msg.metadata.message_id
            if message_id:
                found[str(message_id)] = int(msg.metadata.dst_node_id)
        except Exception:  # pylint: disable=broad-except
            continue
    return found


def _missing_reason(msg: Message) -> MissingReason:
    try:
        code = int(msg.error.code)
    except Exception:  # pylint: disable=broad-except
        return MissingReason.REPLY_UNAVAILABLE
    if code == ErrorCode.NODE_UNAVAILABLE:
        return MissingReason.NODE_UNAVAILABLE
    return MissingReason.REPLY_UNAVAILABLE


def attribute_replies(
    replies: Sequence[Message],
    destinations: Mapping[str, int],
    sent_node_ids: Sequence[int] = (),
) -> tuple[list[Message], dict[int, MissingReason]]:
    """Split a round's replies into the nodes' own and the SuperLink's notices.

    When a node cannot answer (it stopped sending heartbeats, or its reply
    expired), the SuperLink answers in its place: an error Message whose sender is
    the SuperLink (node id 1, never a client's) and whose ``reply_to_message_id``
    names the instruction. Such a notice is not the node's reply: it says that the
    node it was sent to is missing, and why.

    Parameters
    ----------
    replies : Sequence[Message]
        What ``send_and_receive`` returned.
    destinations : Mapping[str, int]
        :func:`instruction_destinations` of the round's instructions.
    sent_node_ids : Sequence[int]
        The round's recipients (only to keep a reply of a node whose id happens to
        be 1 in tests with made-up ids).

    Returns
    -------
    tuple[list[Message], dict[int, MissingReason]]
        The replies written by nodes (still to be validated), and node id ->
        reason for every node the SuperLink reported missing. A notice that names
        no instruction of this round is dropped (and logged).
    """
    own: list[Message] = []
    absent: dict[int, MissingReason] = {}
    for msg in replies:
        try:
            if not msg.has_error():
                own.append(msg)
                continue
            src = int(msg.metadata.src_node_id)
            dst = destinations.get(str(msg.metadata.reply_to_message_id))
        except Exception:  # unreadable: validation rejects it under its sender
            own.append(msg)
            continue
        if dst is not None and src != dst:
            # Written by the SuperLink (or the grid) about node dst.
            absent.setdefault(dst, _missing_reason(msg))
        elif dst is None and src == SUPERLINK_NODE_ID and src not in sent_node_ids:
            log(
                logging.WARNING,
                "Dropped a SuperLink notice that answers no instruction of this "
                "round: %s",
                getattr(msg.error, "reason", "?"),
            )
        else:
            own.append(msg)
    return own, absent
