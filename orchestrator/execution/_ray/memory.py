"""Keep the driver's memory flat however many trials a sweep runs.

Ray Tune keeps every trial it ever created until the sweep ends: the Trial object with its last
results as Ray delivered them, its running statistics (max, min, mean and two moving averages
per numeric key, with their deques), an indented-JSON copy of its state for each experiment-state
save, and a key in Ray's ``log_once`` set for each of its checkpoints. Its default progress
printer keeps every trial too, even when it prints nothing. That was 20-40 KB per trial in the
driver here, so memory grew with every trial (see docs/BENCHMARKS.md ## Scale).

Podium needs none of it once a trial has terminated: its MLflow run has every result, and what
the end of the sweep needs (last result, config, checkpoint folder) goes into the sweep's
:class:`~orchestrator.execution.ledger.TrialLedger` first. So :class:`ForgetFinishedTrials` takes
each terminated trial out of Tune's controller at the end of the step it ended in, after Tune's
experiment state has recorded its end. Then Tune saves, and ``Tuner.fit`` returns, only the
trials that were still live; ``--resume`` reads the others from the ledger. Tune's searcher keeps
its own count of the trials it created, so a forgotten trial is never created again.
:class:`SilentTrialProgress` stands in for Tune's printer. Two leftovers per trial inside Ray
go too (a queued task of each cancelled actor request, the encoder's ``log_once`` keys), and
every 100 forgotten trials the C heap's free pages go back to the OS.

Errored trials stay in Tune (``--resume`` retries them, ``resume_errored``); they only lose their
running statistics, as every ended trial does. Schedulers that keep state per trial by design
(median stopping keeps every result, PBT and HyperBand their trial objects) keep it, and so does
the optuna searcher (its study).

The controller is Ray Tune 2.58's ``TuneController``; Tune hands callbacks its trial list, not
itself, so the callback finds the controller that calls it. If that ever fails (another Ray), it
warns once and only drops the statistics.

Importing this module imports Ray Tune.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from types import FrameType
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.progress_reporter import TrialProgressCallback

from orchestrator.execution.ledger import (
    FinishedTrial,
    TrialLedger,
    checkpoint_location,
    last_result,
)

log = logging.getLogger(__name__)

# What TuneController (Ray 2.58) keeps per trial; a terminated trial is taken out of each.
_TRIAL_HOLDERS = ("_trials", "_live_trials", "_stopped_trials", "_trials_to_cache")
_TRIAL_ID_HOLDERS = ("_trial_metadata", "_cached_trial_decisions", "_queued_trial_decisions")
# Freed C heap goes back to the OS after this many forgotten trials.
TRIM_EVERY = 100
# Tune's JSON encoder marks each object it could not encode in Ray's log_once set, once per
# distinct str(): a trial's storage context per checkpoint index, its checkpoint manager.
_ENCODER_LOG_ONCE = "tune_func_encode:"


def forget_statistics(trial: Any) -> None:
    """Drop an ended trial's per-key running statistics; its last result stays."""
    meta = trial.run_metadata
    meta.metric_analysis = {}
    meta.metric_n_steps = {}


def finished_trial(trial: Any) -> FinishedTrial:
    """The ledger's record of a terminated Tune trial."""
    return FinishedTrial(
        trial.trial_id,
        last_result(trial.last_result),
        dict(trial.config),
        checkpoint_location(trial.checkpoint),
    )


class ForgetFinishedTrials(Callback):
    """Tune callback: record each terminated trial in ``ledger``, then take it out of Tune.

    Without a ledger (Ray Client, where Tune's driver runs on the head, away from the ledger),
    ended trials only lose their running statistics. ``keep``: record them, but leave them in
    Tune, as plain Ray Tune keeps them (``run_experiment(keep_finished=True)``).

    Example:
        >>> forget = ForgetFinishedTrials(TrialLedger(path / LEDGER_FILE))   # doctest: +SKIP
        >>> tune.Tuner(train, run_config=tune.RunConfig(callbacks=[forget]))  # doctest: +SKIP
    """

    def __init__(self, ledger: TrialLedger | None = None, keep: bool = False) -> None:
        self.ledger = ledger
        self.keep = keep
        self.forgotten = 0
        self._controller: Any = None
        self._ended: list[Any] = []
        self._trimmed_at = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks (and ships them to the head under Ray Client); the
        # controller and the trials in hand belong to this driver.
        return {**self.__dict__, "_controller": None, "_ended": []}

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        if self.ledger is None:
            return
        self._controller = calling_controller(*_TRIAL_HOLDERS, *_TRIAL_ID_HOLDERS)
        if self._controller is None:
            log.warning(
                "cannot reach Ray Tune's controller (Ray other than 2.58?): finished trials stay "
                "in the driver's memory until the sweep ends"
            )
            return
        # Resumed: trials that had ended before the driver stopped go to the ledger at once.
        self._ended.extend(t for t in self._controller._trials if t.status == Trial.TERMINATED)
        self._let_go()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        forget_statistics(trial)
        if self._controller is not None:
            self._ended.append(trial)  # Tune is still ending it; it goes at the step's end

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        forget_statistics(trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._ended:
            self._let_go()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # The controller holds this callback: holding the controller back would make a cycle
        # that the garbage collector may free after ray.shutdown(), and Ray's core worker ends
        # the process when a handle is released after shutdown.
        self._controller = None
        self._ended = []

    def _let_go(self) -> None:
        assert self.ledger is not None
        waiting = []
        for trial in self._ended:
            if trial.status != Trial.TERMINATED or self._one_listed():
                waiting.append(trial)  # Tune is still ending it, or it must stay for now
                continue
            self.ledger.append(finished_trial(trial))  # first on disk, then out of memory
            if not self.keep:
                _drop(self._controller, trial)
                self.forgotten += 1
        self._ended = waiting
        if self.keep:
            return
        _forget_encoder_log_once()
        _forget_unstarted_actor_tasks(self._controller)
        if self.forgotten >= self._trimmed_at + TRIM_EVERY:
            self._trimmed_at = self.forgotten
            return_freed_heap()

    def _one_listed(self) -> bool:
        """Whether Tune lists one trial only: the last one stays until another comes.

        Ray 2.58 cannot resume from a saved state that lists no trial (it takes its staging
        folder from the first one, fails, and starts the whole experiment over), and a sweep
        whose trials have all ended, its driver killed before the end, must resume as done.
        """
        return not self.keep and len(self._controller._trials) == 1


class SilentTrialProgress(TrialProgressCallback):
    """Stands in for the progress printer Tune adds to every sweep that has none: at Podium's
    ``verbose=0`` it prints nothing, yet keeps every trial object, with its last result as text,
    until the sweep ends. Podium's own :class:`~orchestrator.execution.callbacks.ProgressView`
    prints."""

    def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_trial_error(self, *args: Any, **kwargs: Any) -> None:
        pass


def calling_controller(*attributes: str) -> Any:
    """The TuneController whose ``setup_experiments`` is calling a callback's ``setup``, if it
    has all of ``attributes`` (the private ones a caller relies on); else None."""
    from ray.tune.execution.tune_controller import TuneController

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, TuneController):
            return candidate if all(hasattr(candidate, a) for a in attributes) else None
        frame = frame.f_back
    return None


def _drop(controller: Any, trial: Any) -> None:
    """Take ``trial`` out of everything ``controller`` keeps; it is terminated, so no actor,
    pending queue or scheduler decision of the controller refers to it any more."""
    controller._trials.remove(trial)
    for name in _TRIAL_HOLDERS[1:]:
        getattr(controller, name).discard(trial)
    for name in _TRIAL_ID_HOLDERS:
        getattr(controller, name).pop(trial.trial_id, None)
    # A scheduler or searcher that keeps the object keeps it without its JSON copies.
    trial.invalidate_json_state()
    trial.run_metadata.invalidate_cache()


def _forget_unstarted_actor_tasks(controller: Any) -> None:
    """Drop the tasks Tune queued for actors that were removed before they started.

    With ``reuse_actors``, Tune asks for an actor for each trial, and when a cached actor takes
    the trial instead, it queues a ``stop`` for the requested one and cancels it. Ray's actor
    manager (2.58) runs queued tasks when an actor starts, and this one never will, so each such
    trial left its request and a task behind for the rest of the sweep.
    """
    try:
        manager = controller._actor_manager
        queued = manager._pending_actors_to_enqueued_actor_tasks
        for actor in [a for a in queued if a not in manager._pending_actors_to_attrs]:
            if actor not in manager._live_actors_to_ray_actors_resources:
                del queued[actor]
    except Exception:  # noqa: BLE001 - memory only; another Ray may not have this bug
        log.debug("could not trim Ray's queued actor tasks", exc_info=True)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's; musl and macOS have none
    except (OSError, AttributeError):
        return None


def return_freed_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``); False where there
    is no such call.

    What a forgotten trial freed in C (Ray's and the MLflow writer's threads allocate in glibc's
    per-thread arenas) stays mapped in those arenas: with Python's own memory flat, the driver's
    resident memory still grew ~4 KB per trial here until this ran (docs/BENCHMARKS.md ## Scale).
    One call takes 1-4 ms on the driver.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _forget_encoder_log_once() -> None:
    """Drop the keys Tune's JSON encoder added to Ray's ``log_once`` set: one per trial and
    checkpoint, each silencing only a repeat of a debug-level message."""
    try:
        from ray.util import debug

        debug._logged.difference_update(
            [k for k in debug._logged if k.startswith(_ENCODER_LOG_ONCE)]
        )
    except Exception:  # noqa: BLE001 - memory only; another Ray may keep this elsewhere
        log.debug("could not trim Ray's log_once set", exc_info=True)


__all__ = [
    "ForgetFinishedTrials",
    "SilentTrialProgress",
    "finished_trial",
    "forget_statistics",
    "return_freed_heap",
]
