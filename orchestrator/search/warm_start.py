"""Earlier trials for a model-based searcher, read from the tracking store: another experiment's
finished trials (``search.warm_start``) or a finished sweep's own (``podium run --more N``).

An earlier trial becomes an evaluated point, with its observed metrics and no retraining, only if
its config is a point of this spec's space: every space's value inside the space and every fixed
setting the same (:func:`orchestrator.search.space.point_of`). Otherwise its metric measured
something else, and it is skipped and counted.

A warm start also trains the best ``rerun`` of another experiment's points again, as this sweep's
first trials. Told only, the searcher knew the best config but this sweep had no model of it to
promote, and TPE's next draws (near the best, not on it) all came out worse: on the search
benchmark's seed 0, every warm-started trial stayed at or below 0.855 validation accuracy where
the source had reached 0.865 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator.search.space import point_of
from orchestrator.spec import MULTI_OBJECTIVE, ExperimentSpec, Problem, SpecError
from tracking import keys
from tracking.selection import validation_twin
from tracking.store import Store


@dataclass
class Seeding:
    """What seeds the searcher, and what was left out."""

    source: str  # "experiment NAME" or "this sweep"
    points: list[Any] = field(default_factory=list)  # orchestrator.search.searchers.Evaluated
    rerun: list[dict[str, Any]] = field(default_factory=list)  # params to train again first
    skipped: int = 0  # earlier trials outside this space
    seeded: int = 0  # set once the searcher took them

    def line(self) -> str:
        again = f"; the best {len(self.rerun)} train again first" if self.rerun else ""
        return (
            f"warm start: {self.seeded} earlier trial(s) of {self.source} seed the searcher "
            f"({self.skipped} outside this space skipped){again}"
        )

    def tag(self) -> str:
        facts = {"source": self.source, "seeded": self.seeded, "skipped": self.skipped}
        return json.dumps({**facts, "rerun": len(self.rerun)} if self.rerun else facts)


def searcher_metrics(spec: ExperimentSpec) -> tuple[list[str], list[str]]:
    """(metrics, modes) the spec's searcher optimises: ``search.metric``, or for a
    multi-objective searcher ``promotion.objectives`` read as the sweep's selection reads them
    (on validation twins unless ``promotion.selection_split`` is ``test``)."""

    s = spec.search
    if s.searcher not in MULTI_OBJECTIVE:
        return [s.metric], [s.mode]
    on_test = spec.promotion.selection_split == "test"
    objectives = spec.promotion.objectives
    metrics = [o["metric"] if on_test else validation_twin(o["metric"]) for o in objectives]
    return metrics, [o.get("mode", "max") for o in objectives]


def from_experiment(store: Store, spec: ExperimentSpec, template: dict[str, Any]) -> Seeding:
    """``search.warm_start``: the best ``top`` completed trials of experiment ``experiment``,
    the best ``rerun`` distinct configs among them to be trained again.

    Raises:
        SpecError: the store has no experiment of that name.
    """
    w = spec.search.warm_start or {}
    name = w["experiment"]
    experiment = store.client.get_experiment_by_name(name)
    if experiment is None:
        names = sorted(e.name for e in store.client.search_experiments())
        why = f"no experiment {name!r} in the store; it has: {', '.join(names) or 'none'}"
        raise SpecError([Problem("search.warm_start.experiment", name, why)])
    runs = _trial_runs(store, experiment.experiment_id, None, completed_only=True)
    seeding = _points(spec, template, runs, f"experiment {name!r}")
    ranked = sorted(seeding.points, key=lambda p: p.last, reverse=spec.search.mode == "max")
    seeding.points = ranked[: int(w.get("top", 50))]
    for point in seeding.points:
        if len(seeding.rerun) < int(w.get("rerun", 1)) and point.params not in seeding.rerun:
            seeding.rerun.append(point.params)
    return seeding


def from_sweep(
    store: Store, spec: ExperimentSpec, template: dict[str, Any], experiment_id: str, parent: str
) -> Seeding:
    """``--more``: every ended trial of the sweep ``parent`` (stopped ones as pruned)."""
    runs = _trial_runs(store, experiment_id, parent, completed_only=False)
    return _points(spec, template, runs, "this sweep")


def _trial_runs(store: Store, experiment_id: str, parent: str | None, completed_only: bool) -> list:
    where = [f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_TRIAL}'"]
    if parent:
        where.append(f"tags.`{keys.TAG_PARENT_RUN}` = '{parent}'")
    if completed_only:
        where.append(f"tags.`{keys.TAG_STATUS}` = 'completed'")
    runs = store.client.search_runs(
        [experiment_id], filter_string=" and ".join(where), max_results=50000
    )
    return list(runs)


def _points(spec: ExperimentSpec, template: dict[str, Any], runs: list, source: str) -> Seeding:
    from orchestrator.search.searchers import Evaluated

    metrics, _ = searcher_metrics(spec)
    seeding = Seeding(source)
    for run in runs:
        status = run.data.tags.get(keys.TAG_STATUS)
        observed = run.data.metrics
        last = observed.get(spec.search.metric)
        if status not in ("completed", "stopped") or last is None:
            continue  # failed, or still running: nothing observed to learn from
        params = point_of(template, run.data.params)
        if params is None:
            seeding.skipped += 1
            continue
        values = None
        if status == "completed" and all(m in observed for m in metrics):
            values = tuple(float(observed[m]) for m in metrics)
        pruned_at = int(observed.get(keys.EPOCH, 0)) if status == "stopped" else None
        point = Evaluated(params, values, pruned_at, float(last), run.info.run_id)
        seeding.points.append(point)
    return seeding
