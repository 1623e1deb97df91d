"""Tune's early-stopping schedulers, except that they let a warm start's known config finish.

A warm start trains the best configs of an earlier sweep again as its first trials
(``search.warm_start.rerun``): the earlier sweep saw them through to their last epoch, and this
sweep needs their models to promote. ASHA stopped such a trial at a rung where a new config,
drawn at random, happened to report a better early epoch. A trial whose config carries
:data:`~orchestrator.search.space.RERUN_KEY` still counts at every rung (the others are compared
with it), but is never stopped; it ends at its last epoch, as the trainable returns there.

HyperBand's brackets pause, resume and stop their trials together, and count them: such a trial
joins no bracket there, runs before the brackets' pending trials, and is never paused or
stopped.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from orchestrator.execution._ray.hyperband import StopsSavingTrials
from orchestrator.search.space import RERUN_KEY


def _is_rerun(trial: Any) -> bool:
    return bool((trial.config or {}).get(RERUN_KEY))


class _FinishesReruns:
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]
        if action == TrialScheduler.STOP and _is_rerun(trial):
            return TrialScheduler.CONTINUE
        return action


class FinishingASHA(_FinishesReruns, ASHAScheduler):
    """Tune's ASHA that lets a warm start's known config finish."""


class FinishingMedian(_FinishesReruns, MedianStoppingRule):
    """Tune's median stopping rule that lets a warm start's known config finish."""


class FinishingHyperBand(StopsSavingTrials):
    """Podium's HyperBand that lets a warm start's known config finish, outside the brackets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reruns: list[Any] = []  # trials outside the brackets, until they end

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if _is_rerun(trial):
            self._reruns.append(trial)
        else:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if trial in self._reruns:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial in self._reruns:
            self._reruns.remove(trial)
        else:
            super().on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        from ray.tune.experiment import Trial

        pending = [t for t in self._reruns if t.status == Trial.PENDING]
        return pending[0] if pending else super().choose_trial_to_run(tune_controller)


__all__ = ["FinishingASHA", "FinishingHyperBand", "FinishingMedian"]
