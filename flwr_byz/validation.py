"""The one way flwr-byz checks a constructor argument or a run-config value.

A *check* is a function of the value that returns ``None`` when the value is
allowed and otherwise the text of what is allowed (``"an integer >= 1"``). The
same check serves a strategy's constructor (:func:`require`, which raises
``ValueError``) and the app's run-config keys (which raise ``RunConfigError``
naming the key), so both say the same thing about the same value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

#: ``check(value) -> None`` when allowed, else what is allowed.
Check = Callable[[Any], "str | None"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None, *, optional: bool = False) -> Check:
    """An ``int`` (never a ``bool``), at least ``low``; ``None`` too if ``optional``."""
    expected = "an integer" if low is None else f"an integer >= {low}"
    if optional:
        expected = f"None or {expected}"

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return expected
        if low is not None and value < low:
            return expected
        return None

    return check


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Check:
    """A finite ``int`` or ``float`` (never a ``bool``) in the given interval."""
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    if math.isinf(low) and math.isinf(high):
        expected = "a finite number"
    elif math.isinf(high):
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif math.isinf(low):
        expected = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        expected = f"a number in {left}{low}, {high}{right}"

    def check(value: Any) -> str | None:
        if not _is_number(value) or not math.isfinite(value):
            return expected
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        return expected if too_low or too_high else None

    return check


def boolean() -> Check:
    """``True`` or ``False`` (not ``0``/``1``)."""

    def check(value: Any) -> str | None:
        return None if isinstance(value, bool) else "true or false"

    return check


def one_of(choices: Iterable[Any]) -> Check:
    """One of ``choices``."""
    allowed = tuple(choices)
    expected = "one of " + ", ".join(repr(c) for c in allowed)

    def check(value: Any) -> str | None:
        return None if value in allowed else expected

    return check


def require(name: str, value: Any, check: Check, *, owner: str = "") -> Any:
    """Return ``value`` when ``check`` allows it, else raise ``ValueError``.

    The message is ``"[owner: ]name=value: allowed values are <what check
    allows>"``; ``owner`` names the function or class that was given it.
    """
    expected = check(value)
    if expected is not None:
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}{name}={value!r}: allowed values are {expected}")
    return value


def renamed_argument(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of an argument renamed from ``old`` to ``new``.

    ``old_value`` is ``None`` unless the caller used the old name; then it warns
    (``DeprecationWarning``: the old name works for one more release) and wins.
    """
    if old_value is None:
        return new_value
    warnings.warn(
        f"argument {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=3
    )
    return old_value
