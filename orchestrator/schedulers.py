"""Scheduler and searcher names (``search.scheduler`` / ``search.searcher``) → Ray Tune objects.

Schedulers stop or perturb trials on the per-epoch ``search.metric``; ``training_iteration``
equals the epoch because a trial reports once per epoch.
"""

from __future__ import annotations

from typing import Any

from orchestrator.space import flat_space, iter_leaves, optuna_define_by_run
from orchestrator.spec import ExperimentSpec, space_kind


def build_scheduler(spec: ExperimentSpec) -> Any:
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    s, max_t = spec.search, spec.training_max_epochs()
    grace = min(s.grace_period, max_t)
    builders = {
        "fifo": lambda: FIFOScheduler(),
        "asha": lambda: ASHAScheduler(
            time_attr="training_iteration", max_t=max_t, grace_period=grace, reduction_factor=3
        ),
        "hyperband": lambda: HyperBandScheduler(time_attr="training_iteration", max_t=max_t),
        "median": lambda: MedianStoppingRule(
            time_attr="training_iteration", grace_period=grace, min_samples_required=3
        ),
        "pbt": lambda: PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=max(1, grace),
            hyperparam_mutations=_pbt_mutations(spec),
        ),
    }
    return builders[s.scheduler]()


def _pbt_mutations(spec: ExperimentSpec) -> dict[str, Any]:
    """PBT perturbs the continuous leaves (lr, dropout, ...) and resamples choices."""
    from orchestrator.space import template_of

    space = flat_space(template_of(spec))
    return {k: v for k, v in space.items() if "[" not in k}


def build_param_space(spec: ExperimentSpec) -> tuple[dict[str, Any], Any]:
    """(Tuner param_space, search_alg or None) for the spec's searcher."""
    from orchestrator.space import template_of

    template = template_of(spec)
    s = spec.search
    if s.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        if not any(True for _ in iter_leaves(template, "")):
            return {}, None  # nothing to search: plain repeats
        searcher = OptunaSearch(
            space=optuna_define_by_run(template),
            metric=s.metric,
            mode=s.mode,
            seed=spec.training_seed(),
        )
        return {}, searcher
    return flat_space(template, grid_choices=s.searcher == "grid"), None


def has_grid(spec: ExperimentSpec) -> bool:
    from orchestrator.space import template_of

    return any(space_kind(sp) == "grid" for _, sp in iter_leaves(template_of(spec), ""))
