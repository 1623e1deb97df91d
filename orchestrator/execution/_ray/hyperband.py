"""Synchronous HyperBand that cannot leave a trial paused for ever.

Tune's HyperBand pauses a trial that reaches its bracket's rung before the others and, when the
last trial of a finished bracket reports, stops the trials that are PAUSED. A pause is two steps
in Tune: the driver asks the trial's actor to save, and only when that answer arrives is the
trial PAUSED. If the last trial's result reaches the driver first (two trials finishing within
moments, on a loaded machine), the pausing trial is RUNNING-and-saving at that moment: Tune's
clean-up skips it, it becomes PAUSED a moment later, no bracket will ever resume or stop it, and
the sweep waits for it for ever (the driver spinning at full CPU). Tune's own halving already
treats a saving trial as paused; :class:`StopsSavingTrials` makes the finished bracket's
clean-up do the same (Tune then stops it once its save is resolved).

Ray 2.58's ``_Bracket`` is private: ``tests/integration/test_searchers.py`` forces the order
above through the real Tune controller, so a Ray upgrade that changes it fails there.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler
from ray.tune.schedulers.hyperband import _Bracket


class _FinishedBracketStopsSavers(_Bracket):
    def cleanup_full(self, tune_controller: Any) -> None:
        for trial in self.current_trials():
            if trial.status == Trial.PAUSED or trial.is_saving:
                tune_controller.stop_trial(trial)


class StopsSavingTrials(HyperBandScheduler):
    """Tune's HyperBandScheduler whose finished brackets also stop a trial still pausing."""

    def _create_bracket(self, s: int) -> _Bracket:
        return _FinishedBracketStopsSavers(
            time_attr=self._time_attr,
            max_trials=self._get_n0(s),
            init_t_attr=self._get_r0(s),
            max_t_attr=self._max_t_attr,
            eta=self._eta,
            s=s,
            stop_last_trials=self._stop_last_trials,
        )
