"""Choosing the best trial: pure functions from trial records to a decision with its reasons.

No Ray and no MLflow here; ``tracking.registry`` carries a decision out. The foundation supports
strategy ``best`` (first objective decides, the rest break ties); multi-objective policies,
constraints and champion/challenger come with the model-selection issue.

Example:
    >>> c = [Candidate("a", {"test_accuracy": 0.9}), Candidate("b", {"test_accuracy": 0.95})]
    >>> select_best(c, Policy()).winner.trial_id
    'b'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tracking import keys


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str = "max"  # "max" or "min"


@dataclass(frozen=True)
class Policy:
    """What "best" means; built from the spec's ``promotion`` section by :func:`policy_from`."""

    objectives: tuple[Objective, ...] = (Objective(keys.TEST_ACCURACY, "max"),)
    constraints: tuple[str, ...] = ()
    strategy: str = "best"
    pick: str = "knee"
    weights: tuple[float, ...] | None = None
    min_improvement: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """One finished trial as selection sees it: its id, final metrics and outcome."""

    trial_id: str
    metrics: dict[str, float]
    status: str = "completed"  # completed | stopped | failed
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    winner: Candidate | None
    reasons: tuple[str, ...]
    rejected: dict[str, str] = field(default_factory=dict)  # trial_id -> why it cannot win


STRATEGIES = ("best",)


def check_policy(section: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Problems in a spec ``promotion`` section's policy keys, as (key, value, message)."""
    out: list[tuple[str, Any, str]] = []
    objectives = section.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        return [("objectives", objectives, "must be a non-empty list of {metric, mode}")]
    for i, o in enumerate(objectives):
        if not isinstance(o, dict) or not isinstance(o.get("metric"), str):
            out.append((f"objectives[{i}]", o, "must be a mapping with 'metric' (and 'mode')"))
        elif o.get("mode", "max") not in ("max", "min"):
            out.append((f"objectives[{i}].mode", o.get("mode"), "must be max or min"))
    if section.get("strategy") not in STRATEGIES:
        out.append(("strategy", section.get("strategy"), f"must be one of: {', '.join(STRATEGIES)}"))
    if section.get("constraints"):
        out.append(("constraints", section["constraints"], "constraints are not supported yet"))
    return out


def policy_from(section: dict[str, Any]) -> Policy:
    return Policy(
        objectives=tuple(Objective(o["metric"], o.get("mode", "max")) for o in section["objectives"]),
        constraints=tuple(section.get("constraints") or ()),
        strategy=section.get("strategy", "best"),
        min_improvement=float(section.get("min_improvement", 0.0)),
    )


def _usable(c: Candidate, policy: Policy) -> str | None:
    """Why ``c`` cannot be selected, or None."""
    if c.status != "completed":
        return f"trial {c.status}"
    for o in policy.objectives:
        v = c.metrics.get(o.metric)
        if v is None:
            return f"no {o.metric}"
        if not math.isfinite(v):
            return f"{o.metric} is {v}"
    return None


def select_best(candidates: list[Candidate], policy: Policy) -> Decision:
    """The best usable candidate: first objective, then the others as tie-breaks, then trial id."""
    rejected = {c.trial_id: why for c in candidates if (why := _usable(c, policy))}
    usable = [c for c in candidates if c.trial_id not in rejected]
    if not usable:
        return Decision(None, ("no candidate completed with finite objective metrics",), rejected)

    def sort_key(c: Candidate) -> tuple:
        signed = tuple(-c.metrics[o.metric] if o.mode == "max" else c.metrics[o.metric]
                       for o in policy.objectives)
        return (*signed, c.trial_id)

    winner = min(usable, key=sort_key)
    first = policy.objectives[0]
    reason = f"best {first.metric} ({first.mode}) = {winner.metrics[first.metric]:.6g} of {len(usable)} usable"
    return Decision(winner, (reason,), rejected)
