"""Averaging the clients' own metrics without trusting their values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def mean_client_metrics(
    metrics: Sequence[Mapping[str, Any]],
    weights: Sequence[float] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, float | list[float]]:
    """Mean of the clients' numeric metrics, key by key, skipping bad values.

    Parameters
    ----------
    metrics : Sequence[Mapping[str, Any]]
        One mapping per valid reply (MetricRecords, or legacy metric dicts).
    weights : Sequence[float] or None
        Per-reply weights (e.g. validated ``num-examples``); ``None`` for an
        unweighted mean.
    exclude : Sequence[str]
        Keys left out (the weighting key, as in Flower).

    Returns
    -------
    dict[str, float | list[float]]
        For each key, the (weighted) mean over the replies whose value is a
        finite number; for list values, the element-wise mean over the replies
        whose list is finite and as long as the first such list. Keys with no
        usable value are omitted; strings and other types are ignored.
    """
    if weights is None:
        weights = [1.0] * len(metrics)
    sums: dict[str, Any] = {}
    totals: dict[str, float] = {}
    for record, weight in zip(metrics, weights, strict=True):
        for key, value in record.items():
            if key in exclude:
                continue
            if isinstance(value, list):
                if not value or not all(_finite_number(v) for v in value):
                    continue
                current = sums.setdefault(key, [0.0] * len(value))
                if not isinstance(current, list) or len(current) != len(value):
                    continue
                sums[key] = [
                    c + weight * v for c, v in zip(current, value, strict=True)
                ]
            elif _finite_number(value):
                current = sums.setdefault(key, 0.0)
                if isinstance(current, list):
                    continue
                sums[key] = current + weight * value
            else:
                continue
            totals[key] = totals.get(key, 0.0) + weight
    out: dict[str, float | list[float]] = {}
    for key, total in totals.items():
        value = sums[key]
        mean = (
            [float(v / total) for v in value]
            if isinstance(value, list)
            else float(value / total)
        )
        # Finite inputs can still overflow the sum; such a key is dropped.
        if total > 0 and all(
            math.isfinite(v) for v in (mean if isinstance(mean, list) else [mean])
        ):
            out[key] = mean
    return out
