"""The value every aggregation rule returns: the aggregate and what the rule decided."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class AggregationResult:
    """Outcome of one aggregation rule on an ``(n, d)`` matrix of updates.

    Row indices refer to the rows of the input matrix; the strategy layer maps
    them to Flower node ids.

    Attributes
    ----------
    aggregate : torch.Tensor
        The ``(d,)`` aggregate, same dtype and device as the input.
    selected : tuple[int, ...]
        Rows whose values entered the aggregate, ascending. For coordinate-wise
        rules (median, trimmed mean) every row is "selected".
    removed : tuple[int, ...]
        Rows the rule discarded, in the order it discarded them (FABA's
        removal order; Krum's rejected rows ascending).
    scores : tuple[float, ...]
        One score per input row where the rule scores rows (Krum score, FABA
        distance at removal time, medoid distance sum); empty otherwise.
    weights : tuple[float, ...]
        One weight per input row with which the aggregate was formed, where
        the rule is a weighted mean of rows (mean, FABA, MultiKrum, GAA
        credits); empty for coordinate-wise rules.
    suspected : tuple[int, ...] or None
        Rows the rule itself judges Byzantine (FLTrust: zero trust; Zeno: the b
        discarded), replacing the strategy's rule-independent suspicion; ``None``
        (default) when the rule has no verdict of its own.
    metrics : Mapping[str, Any]
        Rule-specific diagnostics for the round's MetricRecord (GAA credits, QV
        losses, FLTrust's server-update norm, ...): numbers or lists of numbers,
        keyed as MetricRecord keys. They travel with the result, so a strategy
        keeps no per-round state to report them.
    no_update : str
        Empty when ``aggregate`` is the rule's answer. Otherwise the reason why
        the rule declined to move the model this round (FLTrust: zero total
        trust, or a zero server update); ``aggregate`` is then zeros and the
        strategy keeps the model unchanged (round status ``NO_UPDATE``).
    """

    aggregate: torch.Tensor
    selected: tuple[int, ...]
    removed: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    weights: tuple[float, ...] = field(default=())
    suspected: tuple[int, ...] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    no_update: str = ""
