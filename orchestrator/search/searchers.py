"""Model-based searchers (``search.searcher``): Optuna samplers behind Ray Tune's Optuna searcher.

- ``optuna``: TPE on ``search.metric``. The default model-based choice, with any scheduler.
- ``bohb``: BOHB's recipe on Optuna's parts, meant for ``scheduler: hyperband`` (or asha).
  Multivariate TPE, a kernel-density model of the parameters jointly, as BOHB fits. Its model
  starts once there is one trial more than the space has dimensions. A third of the configs are
  drawn at random, so the model cannot lock onto an early optimum. A trial a bracket stopped is
  told as pruned, with what it reported; TPE ranks pruned trials by the budget they reached and
  then by their value there. BOHB models the largest budget that has enough results, and this
  ranking comes close to that.
- ``motpe`` / ``nsga2``: multi-objective TPE / NSGA-II over ``promotion.objectives``, each read
  on its validation twin as the sweep's selection reads it. The sweep then searches the Pareto
  front it promotes from. Schedulers still stop trials on ``search.metric``.

Every one of them tells Optuna the truth about a trial. A trial a scheduler stopped is *pruned*,
not complete: Tune tells a stopped trial as complete with its last value, so a 1-epoch accuracy
would count as a finished model's. A trial whose loss diverged is *failed*, and a finished trial
is *complete* with its objective values. The searcher can be seeded with trials it never ran
(:meth:`PodiumOptuna.seed_with`: warm start, ``--more``).

Importing this module imports Ray Tune and Optuna; :mod:`orchestrator.search.schedulers` imports it
only when a spec asks for a model-based searcher.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from orchestrator.search.space import RERUN_KEY, OptunaSpace
from tracking import keys

BOHB_RANDOM_FRACTION = 1 / 3  # BOHB's default share of configs drawn at random


@dataclass(frozen=True)
class Evaluated:
    """A trial the searcher did not run but learns from: its Optuna params (names as
    :class:`~orchestrator.search.space.OptunaSpace` suggests them) and its objective values (None
    for a trial stopped at ``pruned_at`` epochs with ``last`` as its search metric there)."""

    params: dict[str, Any]
    values: tuple[float, ...] | None
    pruned_at: int | None = None
    last: float | None = None
    source: str = ""  # the MLflow run it came from


class PodiumOptuna(OptunaSearch):
    """Tune's Optuna searcher over a define-by-run :class:`OptunaSpace`, telling each trial's
    outcome as it is (see the module docs), and able to learn from trials run elsewhere.

    ``reported`` is the per-epoch metric (``search.metric``): Tune checks every result for the
    searcher's ``metric``, and a multi-objective searcher's objectives (latency, size) may be
    measured only once, at a trial's end.
    """

    def __init__(self, *args: Any, reported: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reported = reported

    @property
    def metric(self) -> Any:
        return self._reported or self._metric

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self._metric, list):
            return  # Optuna keeps no intermediate values for several objectives
        with warnings.catch_warnings():
            # A trial HyperBand paused reports its last epoch again when it resumes.
            warnings.filterwarnings("ignore", "The reported value is ignored", UserWarning)
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        study: Any = self._ot_study  # set once the searcher has a space (it suggested this trial)
        trial = self._ot_trials[trial_id]
        ended = not error and result is not None and not result.get(keys.FAILED)
        finished = ended and bool(result and result.get(keys.DONE))
        values = self._values(result) if finished else None
        if values is not None:
            study.tell(trial, list(values))
        elif ended and not finished:  # a scheduler stopped it
            study.tell(trial, state=TrialState.PRUNED)
        else:  # it raised, diverged, or finished without its objectives
            study.tell(trial, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def _values(self, result: dict[str, Any] | None) -> tuple[float, ...] | None:
        """The objective values of a finished trial's last result; None if any is missing or
        not finite (a diverged model is failed, not a point of the front)."""
        metrics = self._metric if isinstance(self._metric, list) else [str(self._metric)]
        out = []
        for m in metrics:
            v = (result or {}).get(m)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            out.append(float(v))
        return tuple(out)

    def run_first(self, params: Sequence[dict[str, Any]]) -> int:
        """Make ``params`` (configs as :meth:`seed_with` takes them) the next trials, in order,
        each marked in its config (:data:`~orchestrator.search.space.RERUN_KEY`) so that schedulers
        let it finish; returns how many."""
        study: Any = self._ot_study
        for p in params:
            study.enqueue_trial(p, user_attrs={RERUN_KEY: True})
        return len(params)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if isinstance(config, dict) and trial is not None and trial.user_attrs.get(RERUN_KEY):
            config = {**config, RERUN_KEY: True}
        return config

    def seed_with(self, points: Sequence[Evaluated]) -> int:
        """Add ``points`` to the study as trials it has seen; returns how many were added
        (a point lacking one of the objectives is left out)."""
        study: Any = self._ot_study
        assert isinstance(self._space, OptunaSpace)
        n_objectives = len(self._metric) if isinstance(self._metric, list) else 1
        added = 0
        for p in points:
            distributions = self._space.distributions(p.params)
            attrs = {"podium_seeded_from": p.source}
            if p.values is not None and len(p.values) == n_objectives:
                trial = optuna.trial.create_trial(
                    params=p.params,
                    distributions=distributions,
                    values=list(p.values),
                    system_attrs=attrs,
                )
            elif p.pruned_at is not None and p.last is not None:
                trial = optuna.trial.create_trial(
                    state=TrialState.PRUNED,
                    params=p.params,
                    distributions=distributions,
                    intermediate_values={p.pruned_at: p.last},
                    system_attrs=attrs,
                )
            else:
                continue
            study.add_trial(trial)
            added += 1
        return added


class BohbSampler(BaseSampler):
    """Multivariate TPE for most trials, random for a fixed share (decided per trial number, so
    a restored study draws the same way)."""

    def __init__(self, n_dims: int, seed: int | None) -> None:
        self.seed = seed or 0
        self.tpe = TPESampler(
            multivariate=True,
            group=True,  # a conditional space: model each branch's parameters together
            n_startup_trials=n_dims + 1,
            seed=seed,
        )
        # Not TPE's seed: TPE's start-up draws use it, and the two would draw the same configs.
        self.random = RandomSampler(seed=None if seed is None else seed + 7919)

    def _draws_randomly(self, trial: Any) -> bool:
        return random.Random(self.seed * 1_000_003 + trial.number).random() < BOHB_RANDOM_FRACTION

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        if self._draws_randomly(trial):
            return {}
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict:
        if self._draws_randomly(trial):
            return {}
        return self.tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Any, trial: Any, param_name: str, param_distribution: Any
    ) -> Any:
        sampler = self.random if self._draws_randomly(trial) else self.tpe
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.tpe.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.tpe.reseed_rng()
        self.random.reseed_rng()


def build_searcher(
    name: str,
    space: OptunaSpace,
    metrics: list[str],
    modes: list[str],
    seed: int | None,
    n_dims: int,
    num_samples: int,
    reported: str,
) -> PodiumOptuna:
    """The searcher ``name`` (one of :data:`orchestrator.spec.MODEL_BASED`) optimising
    ``metrics`` (one, or several for the multi-objective ones)."""
    samplers: dict[str, Any] = {
        "optuna": lambda: TPESampler(seed=seed),
        "bohb": lambda: BohbSampler(n_dims, seed),
        "motpe": lambda: TPESampler(seed=seed, multivariate=True, group=True),
        # NSGA-II breeds a generation at a time: a small sweep needs a small population.
        "nsga2": lambda: NSGAIISampler(
            population_size=max(4, min(50, num_samples // 4)), seed=seed
        ),
    }
    several = len(metrics) > 1
    with warnings.catch_warnings():
        # multivariate and group are marked experimental; Podium pins the Optuna it tests.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = samplers[name]()
    return PodiumOptuna(
        space=space,
        metric=metrics if several else metrics[0],
        mode=modes if several else modes[0],
        sampler=sampler,
        reported=reported,
    )


# Before this module grew, the searcher had this name; checkpoints of old sweeps pickle it.
StoppedAsPrunedOptuna = PodiumOptuna
