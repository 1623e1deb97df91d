"""Searchers Podium builds on Ray Tune's, where Tune's own lose information.

Importing this module imports Ray Tune and Optuna; :mod:`orchestrator.schedulers` imports it only
when a spec asks for ``searcher: optuna``.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tracking import keys


class StoppedAsPrunedOptuna(OptunaSearch):
    """Tune's Optuna searcher, except that a trial an early-stopping scheduler (ASHA,
    HyperBand, median) stopped is told to Optuna as *pruned*, not as complete.

    Tune tells a stopped trial as complete with its last value: a 1-epoch accuracy then counts
    as a finished model's, and TPE models the space on it. Pruned, TPE still learns from it
    (Optuna ranks a pruned trial by its intermediate values, which Tune reports every epoch),
    as what it is: a trial that did not get its budget. A trial's last report says which it is:
    Podium's final report carries ``podium_done``.
    """

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        stopped = (
            not error
            and result is not None
            and not result.get(keys.DONE)
            and not result.get(keys.FAILED)
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
        )
        if not stopped:
            super().on_trial_complete(trial_id, result, error)
            return
        study: Any = self._ot_study  # set once the searcher has a space (it suggested this trial)
        study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
