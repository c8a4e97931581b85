"""Range checks of config dataclasses: each failure is an :class:`InputError` that names the field.

Every config in Sparsekit checks its numbers in ``__post_init__`` with these, so a bad value fails
where it is given (Python API or CLI), before any data loads. ``None`` means "unset" and passes;
``nan`` fails every bound, and so does a value of the wrong type (a string, a bool for a count).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

from sparsekit.errors import InputError


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(name, f"must be a number, got {value!r}")
    return value


def at_least(config: Any, low: float, *names: str) -> None:
    """``getattr(config, name) >= low``, for each name (weights, penalties; integers: :func:`count`)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not _number(name, value) >= low:
            raise InputError(name, f"must be >= {low}, got {value!r}")


def positive(config: Any, *names: str) -> None:
    """``getattr(config, name) > 0`` and finite, for each name (rates, temperatures, scales)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not 0 < _number(name, value) < math.inf:
            raise InputError(name, f"must be a positive number, got {value!r}")


def within(config: Any, low: float, high: float, *names: str, open_high: bool = False) -> None:
    """``low <= getattr(config, name) <= high`` (``< high`` with ``open_high``), for each name."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        number = _number(name, value)
        if not (low <= number < high if open_high else low <= number <= high):
            bracket = ")" if open_high else "]"
            raise InputError(name, f"must lie in [{low}, {high}{bracket}, got {value!r}")


def count(config: Any, low: int, *names: str) -> None:
    """``getattr(config, name)`` is an integer ``>= low``, for each name (epochs, sizes, depths)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or value < low):
            raise InputError(name, f"must be an integer >= {low}, got {value!r}")


def each_count(config: Any, low: int, name: str) -> None:
    """Every value of the non-empty sequence ``getattr(config, name)`` is an integer ``>= low``."""
    values = getattr(config, name)
    if not values:
        raise InputError(name, "needs at least one value")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low for v in values):
        raise InputError(name, f"every value must be an integer >= {low}, got {list(values)}")


def each_positive(config: Any, name: str) -> None:
    """Every value of the non-empty sequence ``getattr(config, name)`` is a positive finite number."""
    values = getattr(config, name)
    if not values:
        raise InputError(name, "needs at least one value")
    if not all(0 < _number(name, v) < math.inf for v in values):
        raise InputError(name, f"every value must be a positive number, got {list(values)}")


def one_of(config: Any, name: str, choices: Collection[Any]) -> None:
    """``getattr(config, name)`` is one of ``choices``."""
    value = getattr(config, name)
    if value not in choices:
        raise InputError(name, f"must be one of {sorted(choices)}, got {value!r}")
