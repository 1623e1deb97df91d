"""Scheduler and searcher names (``search.scheduler`` / ``search.searcher``) → Ray Tune objects.

Schedulers stop or perturb trials on the per-epoch ``search.metric``; ``training_iteration``
equals the epoch because a trial reports once per epoch.
"""

from __future__ import annotations

from typing import Any

from orchestrator.search.space import OptunaSpace, flat_space, iter_leaves, template_of
from orchestrator.spec import MODEL_BASED, ExperimentSpec, space_kind


def build_scheduler(spec: ExperimentSpec) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    from orchestrator.search.early_stop import FinishingASHA, FinishingHyperBand, FinishingMedian
    from orchestrator.search.pbt import build_pbt

    s, max_t = spec.search, spec.training_max_epochs()
    grace = min(s.grace_period, max_t)
    builders = {
        "fifo": lambda: FIFOScheduler(),
        "asha": lambda: FinishingASHA(
            time_attr="training_iteration", max_t=max_t, grace_period=grace, reduction_factor=3
        ),
        "hyperband": lambda: FinishingHyperBand(time_attr="training_iteration", max_t=max_t),
        "median": lambda: FinishingMedian(
            time_attr="training_iteration", grace_period=grace, min_samples_required=3
        ),
        "pbt": lambda: build_pbt(template_of(spec), interval=max(1, grace)),
    }
    return builders[s.scheduler]()


def checkpoints_to_keep(spec: ExperimentSpec) -> int | None:
    """Checkpoints Tune keeps per trial (None: all). Other schedulers only resume a trial from
    its own newest checkpoint. PBT restores an exploited trial from the source trial's checkpoint
    when the exploited trial gets a slot again, which on a busy cluster can be many epochs later,
    while the source goes on checkpointing (and Tune deletes what it does not keep): so under
    PBT a trial keeps all of them (Tune warns that ``num_to_keep <= 2`` breaks PBT's restores).
    A PBT population is small, and its checkpoints go when the sweep's folder does."""
    return None if spec.search.scheduler == "pbt" else 2


def build_param_space(spec: ExperimentSpec, seed_offset: int = 0) -> tuple[dict[str, Any], Any]:
    """(Tuner param_space, search_alg) for the spec's searcher, seeded from the spec's seed plus
    ``seed_offset``: a model-based one's sampler, or random's draws (Tune's own generator draws
    from numpy's global state, so two runs of one spec would sample different configs)."""

    template = template_of(spec)
    s = spec.search
    n_dims = sum(1 for _ in iter_leaves(template, ""))
    if s.searcher in MODEL_BASED and n_dims:  # with nothing to search: plain repeats
        import optuna

        from orchestrator.search.searchers import build_searcher
        from orchestrator.search.warm_start import searcher_metrics

        # Optuna announces every study it creates on the console, inside the progress view.
        optuna.logging.set_verbosity(optuna.logging.WARNING)

        metrics, modes = searcher_metrics(spec)
        searcher = build_searcher(
            s.searcher,
            OptunaSpace(template),
            metrics,
            modes,
            spec.training_seed() + seed_offset,
            n_dims,
            s.num_samples,
            s.metric,
        )
        return {}, searcher
    from ray.tune.search import BasicVariantGenerator

    draws = BasicVariantGenerator(
        max_concurrent=s.max_concurrent or 0, random_state=spec.training_seed() + seed_offset
    )
    return flat_space(template, grid_choices=s.searcher == "grid"), draws


def has_grid(spec: ExperimentSpec) -> bool:

    return any(space_kind(sp) == "grid" for _, sp in iter_leaves(template_of(spec), ""))
