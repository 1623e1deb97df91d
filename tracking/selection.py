"""Choosing the best trial: pure functions from trial records to a decision with its reasons.

No Ray and no MLflow here; ``tracking.registry.promote`` carries a decision out. A :class:`Policy`
(the spec's ``promotion`` section) says what "best" means:

- ``objectives``: one or more ``{metric, mode}``.
- ``constraints``: ``latency_ms_p50 <= 1.0`` and the like (:mod:`tracking.constraints`); a trial
  that breaks one is infeasible and never wins.
- ``strategy: best``: the first objective decides, the others break ties, then the trial id.
- ``strategy: pareto``: the Pareto front over all objectives, then ``pick``: ``knee`` (the front
  point closest to the ideal point once each objective is scaled to [0, 1] over the front) or
  ``weighted`` (the highest weighted sum of those scaled values).
- ``min_improvement``: how much a challenger must gain on the first objective to replace the
  champion (:func:`decide_promotion`).

Within a sweep the winner is chosen on validation (:func:`within_sweep`: a ``test_`` objective
or constraint is read on its ``val_`` twin); the test split compares champion and challenger.

Trials that failed, were stopped before their final evaluation, miss an objective, or carry a NaN
metric are never selected.

Example:
    >>> c = [Candidate("a", {"test_accuracy": 0.9}), Candidate("b", {"test_accuracy": 0.95})]
    >>> select_best(c, Policy()).winner.trial_id
    'b'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tracking import keys
from tracking.constraints import Constraint, check_constraints, parse_constraints


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str = "max"  # "max" or "min"

    def signed(self, value: float) -> float:
        """``value`` oriented so that larger is always better."""
        return value if self.mode == "max" else -value


@dataclass(frozen=True)
class Policy:
    """What "best" means; built from the spec's ``promotion`` section by :func:`policy_from`."""

    objectives: tuple[Objective, ...] = (Objective(keys.TEST_ACCURACY, "max"),)
    constraints: tuple[str, ...] = ()
    strategy: str = "best"
    pick: str = "knee"
    weights: tuple[float, ...] | None = None
    min_improvement: float = 0.0

    def parsed_constraints(self) -> tuple[Constraint, ...]:
        return parse_constraints(list(self.constraints))


@dataclass(frozen=True)
class Candidate:
    """One finished trial (or registered model version) as selection sees it.

    Attributes:
        trial_id: the trial's id (or ``"<model>/v<version>"`` for a registered version).
        metrics: final metrics.
        status: ``completed``, ``stopped`` (by the scheduler, before its final evaluation) or
            ``failed``; only completed candidates can win.
        run_id: the MLflow run that holds the model, if known.
        config: the trial's resolved config (for reports).
        split: the test split the metrics were measured on, e.g. ``digits:seed=0``; champion and
            challenger are only compared on the same split.
    """

    trial_id: str
    metrics: dict[str, float]
    status: str = "completed"  # completed | stopped | failed
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    split: str | None = None


@dataclass(frozen=True)
class Decision:
    """A selection's outcome: the winner (None if nobody can win), why, and who was ruled out.

    For :func:`decide_promotion`, ``winner`` is the candidate that should hold the alias afterwards
    and ``promote`` is True only when that is the challenger replacing someone (or no one).
    """

    winner: Candidate | None
    reasons: tuple[str, ...]
    rejected: dict[str, str] = field(default_factory=dict)  # trial_id -> why it cannot win
    promote: bool = False


STRATEGIES = ("best", "pareto")
PICKS = ("knee", "weighted")


# --------------------------------------------------------------------------- policy from spec


def check_policy(section: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Problems in a spec ``promotion`` section's policy keys, as (key, value, message).

    Example:
        >>> check_policy({"objectives": [{"metric": "test_accuracy"}], "strategy": "paretoo"})
        [('strategy', 'paretoo', 'must be one of: best, pareto')]
    """
    out = _check_objectives(section.get("objectives"))
    strategy = section.get("strategy", "best")
    if strategy not in STRATEGIES:
        out.append(("strategy", strategy, f"must be one of: {', '.join(STRATEGIES)}"))
    pick = section.get("pick", "knee")
    if pick not in PICKS:
        out.append(("pick", pick, f"must be one of: {', '.join(PICKS)}"))
    out += _check_weights(section.get("weights"), section.get("objectives"), pick)
    mi = section.get("min_improvement", 0.0)
    if not _is_number(mi) or not math.isfinite(mi) or mi < 0:
        out.append(("min_improvement", mi, "must be a finite number >= 0"))
    out += check_constraints(section.get("constraints"))
    return out


def _check_objectives(objectives: Any) -> list[tuple[str, Any, str]]:
    if not isinstance(objectives, list) or not objectives:
        return [("objectives", objectives, "must be a non-empty list of {metric, mode}")]
    out: list[tuple[str, Any, str]] = []
    seen: set[str] = set()
    for i, o in enumerate(objectives):
        if not isinstance(o, dict) or not isinstance(o.get("metric"), str) or not o["metric"]:
            out.append((f"objectives[{i}]", o, "must be a mapping with 'metric' (and 'mode')"))
            continue
        if set(o) - {"metric", "mode"}:
            out.append((f"objectives[{i}]", o, "only 'metric' and 'mode' are allowed"))
        if o.get("mode", "max") not in ("max", "min"):
            out.append((f"objectives[{i}].mode", o.get("mode"), "must be max or min"))
        if o["metric"] in seen:
            out.append((f"objectives[{i}].metric", o["metric"], "listed twice"))
        seen.add(o["metric"])
    return out


def _check_weights(weights: Any, objectives: Any, pick: Any) -> list[tuple[str, Any, str]]:
    if weights is None:
        return []
    if not isinstance(weights, list) or not all(
        _is_number(w) and math.isfinite(w) and w >= 0 for w in weights
    ):
        return [("weights", weights, "must be a list of finite numbers >= 0")]
    if not any(w > 0 for w in weights):
        return [("weights", weights, "at least one weight must be > 0")]
    if isinstance(objectives, list) and len(weights) != len(objectives):
        return [("weights", weights, f"needs one weight per objective ({len(objectives)})")]
    if pick != "weighted":
        return [("weights", weights, "only used with pick: weighted; set pick: weighted")]
    return []


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def policy_from(section: dict[str, Any]) -> Policy:
    """A :class:`Policy` from a (validated) spec ``promotion`` section or a ``--policy`` file."""
    weights = section.get("weights")
    return Policy(
        objectives=tuple(
            Objective(o["metric"], o.get("mode", "max")) for o in section["objectives"]
        ),
        constraints=tuple(section.get("constraints") or ()),
        strategy=section.get("strategy", "best"),
        pick=section.get("pick", "knee"),
        weights=tuple(float(w) for w in weights) if weights else None,
        min_improvement=float(section.get("min_improvement", 0.0)),
    )


def validation_twin(metric: str) -> str:
    """The validation metric that stands for a test metric within a sweep: ``test_X`` →
    ``val_X`` (``test_robust_accuracy`` → ``robust_accuracy``); any other metric is itself."""
    if metric == keys.TEST_ROBUST_ACCURACY:
        return keys.ROBUST_ACCURACY
    return "val_" + metric.removeprefix("test_") if metric.startswith("test_") else metric


def within_sweep(policy: Policy, candidates: Sequence[Candidate]) -> Policy:
    """The policy a sweep's winner is chosen by: ``policy`` with every objective and constraint
    on a test metric read on its validation twin, where the trials report one.

    Choosing among trials on the test split makes the winner's test score optimistic (the
    split took part in the choice). So a sweep chooses on validation, and the test split is
    measured for every trial but decides only between sweeps: champion against challenger
    (:func:`decide_promotion`) compare on ``policy`` as written.

    Example:
        >>> p = Policy(constraints=("test_accuracy >= 0.9",))
        >>> c = [Candidate("a", {"test_accuracy": 0.95, "val_accuracy": 0.9})]
        >>> q = within_sweep(p, c)
        >>> q.objectives[0].metric, q.constraints
        ('val_accuracy', ('val_accuracy >= 0.9',))
    """
    reported = {m for c in candidates for m in c.metrics}

    def twin(metric: str) -> str:
        other = validation_twin(metric)
        return other if other in reported else metric

    constraints = []
    for c in policy.parsed_constraints():
        name = twin(c.metric)
        constraints.append(c.text.replace(c.metric, name, 1))  # the metric leads the text
    return replace(
        policy,
        objectives=tuple(Objective(twin(o.metric), o.mode) for o in policy.objectives),
        constraints=tuple(constraints),
    )


# --------------------------------------------------------------------------- eligibility


def rejection(
    c: Candidate, policy: Policy, constraints: Sequence[Constraint] | None = None
) -> str | None:
    """Why ``c`` can never be selected under ``policy``, or None when it is eligible."""
    if c.status != "completed":
        return f"trial {c.status}" + (
            " before its final evaluation" if c.status == "stopped" else ""
        )
    for name, v in sorted(c.metrics.items()):
        if isinstance(v, float) and math.isnan(v):
            return f"{name} is nan"
    for o in policy.objectives:
        got = c.metrics.get(o.metric)
        if got is None:
            return f"no {o.metric}"
        if not math.isfinite(got):
            return f"{o.metric} is {got}"
    cons = policy.parsed_constraints() if constraints is None else constraints
    broken = [why for k in cons if (why := k.broken_by(c.metrics))]
    return "breaks " + "; ".join(broken) if broken else None


def _split(
    candidates: Iterable[Candidate], policy: Policy
) -> tuple[list[Candidate], dict[str, str]]:
    cons = policy.parsed_constraints()
    rejected = {c.trial_id: why for c in candidates if (why := rejection(c, policy, cons))}
    return [c for c in candidates if c.trial_id not in rejected], rejected


# --------------------------------------------------------------------------- Pareto front


def dominates(a: Candidate, b: Candidate, objectives: Sequence[Objective]) -> bool:
    """True when ``a`` is no worse than ``b`` on every objective and better on at least one."""
    sa = [o.signed(a.metrics[o.metric]) for o in objectives]
    sb = [o.signed(b.metrics[o.metric]) for o in objectives]
    return all(x >= y for x, y in zip(sa, sb, strict=True)) and any(
        x > y for x, y in zip(sa, sb, strict=True)
    )


def pareto_front(
    candidates: Sequence[Candidate], objectives: Sequence[Objective]
) -> list[Candidate]:
    """The candidates no other candidate dominates (ties on every objective all stay), in input
    order. Candidates must have every objective metric (filter with :func:`rejection` first)."""
    return [c for c in candidates if not any(dominates(o, c, objectives) for o in candidates)]


def _scaled(front: Sequence[Candidate], objectives: Sequence[Objective]) -> list[list[float]]:
    """Each front point's objectives oriented larger-is-better and scaled to [0, 1] over the front.
    An objective on which the whole front ties scales to 1 for everyone (it cannot decide)."""
    cols = []
    for o in objectives:
        vals = [o.signed(c.metrics[o.metric]) for c in front]
        lo, hi = min(vals), max(vals)
        cols.append([(v - lo) / (hi - lo) if hi > lo else 1.0 for v in vals])
    return [list(row) for row in zip(*cols, strict=True)]


def knee_point(front: Sequence[Candidate], objectives: Sequence[Objective]) -> Candidate:
    """The front point closest (Euclidean) to the ideal point, every objective scaled to [0, 1]
    over the front: the balanced trade-off. Ties go to the smaller trial id."""
    scaled = _scaled(front, objectives)
    dist = [math.dist(row, [1.0] * len(row)) for row in scaled]
    return min(zip(dist, front, strict=True), key=lambda p: (p[0], p[1].trial_id))[1]


def weighted_pick(
    front: Sequence[Candidate], objectives: Sequence[Objective], weights: Sequence[float] | None
) -> Candidate:
    """The front point with the highest weighted sum of scaled objectives (equal weights if None).
    Ties go to the smaller trial id."""
    w = list(weights) if weights else [1.0] * len(objectives)
    scores = [
        sum(wi * si for wi, si in zip(w, row, strict=True)) for row in _scaled(front, objectives)
    ]
    return min(zip(scores, front, strict=True), key=lambda p: (-p[0], p[1].trial_id))[1]


# --------------------------------------------------------------------------- selection


def _lexi_key(c: Candidate, objectives: Sequence[Objective]) -> tuple:
    return (*(-o.signed(c.metrics[o.metric]) for o in objectives), c.trial_id)


def select_best(candidates: list[Candidate], policy: Policy) -> Decision:
    """The winner among ``candidates`` under ``policy`` (strategy best or pareto), with reasons.

    Example:
        >>> p = Policy(constraints=("latency_ms_p50 <= 1.0",))
        >>> d = select_best([Candidate("a", {"test_accuracy": 0.99, "latency_ms_p50": 3.0}),
        ...                  Candidate("b", {"test_accuracy": 0.95, "latency_ms_p50": 0.4})], p)
        >>> d.winner.trial_id, d.rejected["a"]
        ('b', 'breaks latency_ms_p50 <= 1.0 (got 3)')
    """
    usable, rejected = _split(candidates, policy)
    if not usable:
        why = "no candidate is completed, finite and feasible" + (
            f" under {', '.join(policy.constraints)}" if policy.constraints else ""
        )
        return Decision(None, (why, f"{len(rejected)} rejected"), rejected)
    reasons = [f"{len(usable)} of {len(candidates)} candidates eligible"]
    if policy.strategy == "pareto":
        front = pareto_front(usable, policy.objectives)
        if policy.pick == "weighted":
            winner = weighted_pick(front, policy.objectives, policy.weights)
        else:
            winner = knee_point(front, policy.objectives)
        reasons.append(
            f"Pareto front over {_names(policy.objectives)}: {', '.join(c.trial_id for c in front)}"
        )
        reasons.append(f"{policy.pick} pick: {winner.trial_id} ({_fmt(winner, policy.objectives)})")
    else:
        winner = min(usable, key=lambda c: _lexi_key(c, policy.objectives))
        first = policy.objectives[0]
        ties = [
            c.trial_id for c in usable if c.metrics[first.metric] == winner.metrics[first.metric]
        ]
        reasons.append(f"best {first.metric} ({first.mode}) = {winner.metrics[first.metric]:.6g}")
        if len(ties) > 1:
            reasons.append(
                f"tied with {', '.join(t for t in ties if t != winner.trial_id)}; "
                f"broken by {_names(policy.objectives[1:]) or 'trial id'}"
                + (" then trial id" if len(policy.objectives) > 1 else "")
            )
    return Decision(winner, tuple(reasons), rejected)


def _names(objectives: Sequence[Objective]) -> str:
    return ", ".join(f"{o.metric} ({o.mode})" for o in objectives)


def _fmt(c: Candidate, objectives: Sequence[Objective]) -> str:
    return ", ".join(f"{o.metric}={c.metrics[o.metric]:.6g}" for o in objectives)


# --------------------------------------------------------------------------- champion vs challenger


def decide_promotion(
    challenger: Candidate | None, incumbent: Candidate | None, policy: Policy
) -> Decision:
    """Whether ``challenger`` (a sweep's winner) should replace ``incumbent`` (the champion).

    Rules, in order: an ineligible challenger never wins; with no champion the challenger wins;
    the same run is already champion (idempotent); champion and challenger measured on different
    test splits are not compared (keep the champion); a champion that no longer meets the policy
    is replaced; otherwise the challenger must beat the champion — strategy ``best``: by at least
    ``min_improvement`` on the first objective (or, when that is 0, lexicographically over the
    objectives); strategy ``pareto``: dominate the champion, and gain ``min_improvement`` on the
    first objective when it is set.

    Example:
        >>> champ = Candidate("v1", {"test_accuracy": 0.95}, split="digits:seed=0")
        >>> chall = Candidate("t7", {"test_accuracy": 0.951}, split="digits:seed=0")
        >>> decide_promotion(chall, champ, Policy(min_improvement=0.005)).promote
        False
    """
    if challenger is None:
        return Decision(incumbent, ("no challenger",))
    if why := rejection(challenger, policy):
        return Decision(
            incumbent,
            (f"challenger {challenger.trial_id} is not eligible: {why}",),
            {challenger.trial_id: why},
        )
    if incumbent is None:
        return Decision(
            challenger, (f"no champion yet: {challenger.trial_id} becomes champion",), promote=True
        )
    if challenger.run_id is not None and challenger.run_id == incumbent.run_id:
        return Decision(incumbent, (f"run {challenger.run_id} is already champion",))
    if challenger.split is None or challenger.split != incumbent.split:
        return Decision(
            incumbent,
            (
                f"not comparable: challenger measured on test split {challenger.split!r}, "
                f"champion {incumbent.trial_id} on {incumbent.split!r}; champion kept",
            ),
        )
    if why := rejection(incumbent, policy):
        return Decision(
            challenger,
            (f"champion {incumbent.trial_id} no longer meets the policy: {why}",),
            promote=True,
        )
    better, reason = _beats(challenger, incumbent, policy)
    return Decision(challenger if better else incumbent, (reason,), promote=better)


def _beats(ch: Candidate, inc: Candidate, policy: Policy) -> tuple[bool, str]:
    first = policy.objectives[0]
    gain = first.signed(ch.metrics[first.metric]) - first.signed(inc.metrics[first.metric])
    vs = f"{ch.trial_id} vs champion {inc.trial_id} on {first.metric}: {gain:+.6g}"
    if policy.strategy == "pareto" and not dominates(ch, inc, policy.objectives):
        return (
            False,
            f"{ch.trial_id} does not dominate champion {inc.trial_id} "
            f"on {_names(policy.objectives)}",
        )
    if policy.min_improvement > 0:
        ok = gain >= policy.min_improvement
        return ok, f"{vs} ({'>=' if ok else '<'} min_improvement {policy.min_improvement:g})"
    if policy.strategy == "pareto":
        return (
            True,
            f"{ch.trial_id} dominates champion {inc.trial_id} on {_names(policy.objectives)}",
        )
    ok = _lexi_key(ch, policy.objectives)[:-1] < _lexi_key(inc, policy.objectives)[:-1]
    return ok, f"{vs} ({'better' if ok else 'not better'} over {_names(policy.objectives)})"


# --------------------------------------------------------------------------- leaderboard marks


@dataclass(frozen=True)
class Mark:
    """What the leaderboard shows next to a trial."""

    pareto: bool  # on the Pareto front of the eligible trials
    excluded: str | None  # why it cannot win (broken constraint, failed, nan...), or None


def mark_candidates(candidates: list[Candidate], policy: Policy) -> dict[str, Mark]:
    """Per trial id: Pareto-optimal among the eligible, and why an excluded trial is excluded.

    Example:
        >>> p = Policy(objectives=(Objective("acc"), Objective("ms", "min")))
        >>> m = mark_candidates([Candidate("a", {"acc": 0.9, "ms": 1.0}),
        ...                      Candidate("b", {"acc": 0.8, "ms": 2.0})], p)
        >>> m["a"].pareto, m["b"].pareto
        (True, False)
    """
    usable, rejected = _split(candidates, policy)
    front = {c.trial_id for c in pareto_front(usable, policy.objectives)}
    return {c.trial_id: Mark(c.trial_id in front, rejected.get(c.trial_id)) for c in candidates}
