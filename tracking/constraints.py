"""Promotion constraints such as ``latency_ms_p50 <= 1.0``: parsed by a regex, never evaluated.

A constraint is ``<metric> <op> <number>`` with ``op`` one of ``<=, <, >=, >, ==``. The text comes
from a spec (or a ``--policy`` file) that may be untrusted, so it is matched against a fixed
grammar, not handed to ``eval``.

Example:
    >>> c = parse_constraint("model_size_bytes <= 500000")
    >>> c.broken_by({"model_size_bytes": 612000.0})
    'model_size_bytes <= 500000 (got 612000)'
    >>> c.broken_by({"model_size_bytes": 1000.0}) is None
    True
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}
# Longest operators first so '<=' is not read as '<' followed by '=5'.
_CONSTRAINT_RE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.\-/]*)\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """``metric op value``; a candidate is feasible when its metric satisfies it."""

    metric: str
    op: str
    value: float
    text: str

    def broken_by(self, metrics: Mapping[str, float]) -> str | None:
        """Why ``metrics`` break this constraint, or None when they satisfy it.

        A missing or non-finite metric breaks it: a trial we cannot measure is not feasible.
        """
        got = metrics.get(self.metric)
        if got is None:
            return f"{self.text} (no {self.metric})"
        if not math.isfinite(got):
            return f"{self.text} (got {got})"
        if OPERATORS[self.op](got, self.value):
            return None
        return f"{self.text} (got {got:.6g})"


class ConstraintError(ValueError):
    """A constraint string does not follow ``<metric> <op> <number>``."""


def parse_constraint(text: Any) -> Constraint:
    """Parse one constraint string.

    Raises:
        ConstraintError: ``text`` is not a string of the form ``metric op number``.
    """
    if not isinstance(text, str):
        raise ConstraintError(f"must be a string like 'latency_ms_p50 <= 1.0', got {text!r}")
    m = _CONSTRAINT_RE.match(text)
    if not m:
        raise ConstraintError(
            f"{text!r} is not '<metric> <op> <number>' with op one of "
            f"{', '.join(OPERATORS)} (e.g. 'test_accuracy >= 0.85')"
        )
    value = float(m["value"])
    normal = f"{m['metric']} {m['op']} {m['value']}"
    return Constraint(m["metric"], m["op"], value, normal)


def parse_constraints(texts: Any) -> tuple[Constraint, ...]:
    """Parse a list of constraint strings (None or empty: no constraints).

    Raises:
        ConstraintError: the first bad item, naming its index.
    """
    if not texts:
        return ()
    if not isinstance(texts, (list, tuple)):
        raise ConstraintError(f"must be a list of strings, got {texts!r}")
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(parse_constraint(t))
        except ConstraintError as e:
            raise ConstraintError(f"constraints[{i}]: {e}") from None
    return tuple(out)


def check_constraints(texts: Any) -> list[tuple[str, Any, str]]:
    """Every bad constraint as ``(key, value, message)``, keys like ``constraints[1]``."""
    if texts is None:
        return []
    if not isinstance(texts, (list, tuple)):
        return [("constraints", texts, "must be a list of strings like 'latency_ms_p50 <= 1.0'")]
    out = []
    for i, t in enumerate(texts):
        try:
            parse_constraint(t)
        except ConstraintError as e:
            out.append((f"constraints[{i}]", t, str(e)))
    return out
