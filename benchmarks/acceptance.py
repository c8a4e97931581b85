"""Acceptance entries of a benchmark result (../shared/docs/DESIGN.md §7): one per criterion, holding the
measured value.

Every benchmark judges its criteria through :func:`entry`, so ``pass`` means the same thing in every
results file: ``value op target`` on the unrounded value.
"""

from __future__ import annotations

import operator
from typing import Any

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def entry(criterion: str, value: Any, op: str, target: Any, *, digits: int | None = None,
          slack: float = 0.0) -> dict[str, Any]:
    """``{"criterion", "value", "op", "target", "pass"}``. ``digits`` rounds the recorded value (the
    judgement uses the exact one); ``slack`` widens ``<=`` / ``>=`` by float noise, for values that are
    differences of rounded numbers (a delta of exactly -0.001 meets a -0.001 target)."""
    if op not in OPS:
        raise ValueError(f"unknown comparison {op!r}; use one of {sorted(OPS)}")
    bound = target + slack if op == "<=" else target - slack if op == ">=" else target
    shown = round(float(value), digits) if digits is not None else value
    return {"criterion": criterion, "value": shown, "op": op, "target": target,
            "pass": bool(OPS[op](value, bound))}


def not_measured(criterion: str, op: str, target: Any, why: str) -> dict[str, Any]:
    """The entry of a criterion this run could not measure: no value, and not a pass."""
    if op not in OPS:
        raise ValueError(f"unknown comparison {op!r}; use one of {sorted(OPS)}")
    return {"criterion": f"{criterion} (not measured: {why})", "value": None, "op": op, "target": target,
            "pass": False}
