"""Tune callbacks: the MLflow trial logger (driver side) and the live progress view.

Importing this module imports Ray Tune (seconds); the runner imports it only when a sweep starts.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from orchestrator.results import STRING_KEYS, result_metrics, trial_error_text, trial_status
from orchestrator.space import flatten_params, resolve
from tracking import keys
from tracking.store import RunWriter


class _DriverOnly:
    """Tune pickles its callbacks into the experiment state; ours hold a thread and a stream that
    only make sense in this driver, so they pickle as empty shells (``--resume`` installs fresh
    ones)."""

    def __getstate__(self) -> dict[str, Any]:
        return {}


class MlflowTrialLogger(_DriverOnly, Callback):
    """Logs each trial as a child run: params at start, metrics per epoch, outcome at the end."""

    def __init__(self, writer: RunWriter, template: dict[str, Any]) -> None:
        self.writer = writer
        self.template = template
        self._tagged: set[tuple[str, str]] = set()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.writer.run_id(trial.trial_id) is not None:
            return  # resumed into its existing run
        params = flatten_params(resolve(self.template, trial.config))
        self.writer.trial_started(trial.trial_id, str(trial), params, {})

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        step = int(result.get(keys.EPOCH, result.get("training_iteration", 0)))
        self.writer.log_metrics(trial.trial_id, result_metrics(result), step)
        # Where the trial ran (first result) and the CPU its latency was measured on (last).
        new = {(trial.trial_id, k) for k in STRING_KEYS if k in result} - self._tagged
        if new:
            self._tagged |= new
            self.writer.set_tags(trial.trial_id, {STRING_KEYS[k]: str(result[k]) for _, k in new})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = trial_status(trial.last_result, errored=False)
        tags = {keys.TAG_STATUS: status}
        if status == "failed":
            tags[keys.TAG_ERROR] = str(trial.last_result.get(keys.FAILED))[:5000]
        self.writer.set_tags(trial.trial_id, tags)
        self.writer.trial_ended(trial.trial_id, "FAILED" if status == "failed" else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.writer.set_tags(
            trial.trial_id,
            {keys.TAG_STATUS: "failed", keys.TAG_ERROR: trial_error_text(trial)[:5000]},
        )
        self.writer.trial_ended(trial.trial_id, "FAILED")


class ProgressView(_DriverOnly, Callback):
    """A live, one-line view of the sweep instead of Ray's log stream.

    ``verbosity`` 0 prints nothing, 1 a status line when a trial ends (and at most every 10 s),
    2 also one line per result.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        total: int | None,
        verbosity: int = 1,
        out: TextIO = sys.stderr,
    ) -> None:
        self.metric, self.mode, self.total = metric, mode, total
        self.verbosity, self.out = verbosity, out
        self.best: tuple[float, str] | None = None
        self.started = time.monotonic()
        self._last_print = 0.0

    def _better(self, v: float) -> bool:
        if self.best is None:
            return True
        return v > self.best[0] if self.mode == "max" else v < self.best[0]

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        v = result.get(self.metric)
        if (
            isinstance(v, (int, float))
            and math.isfinite(v)
            and not result.get(keys.FAILED)
            and self._better(v)
        ):
            self.best = (float(v), trial.trial_id)
        if self.verbosity >= 2:
            self._say(
                f"  {trial.trial_id} epoch {result.get(keys.EPOCH)}: {self.metric}={v:.4f}"
                if isinstance(v, (int, float))
                else f"  {trial.trial_id}: {result}"
            )
        elif self.verbosity == 1 and time.monotonic() - self._last_print > 10:
            self._status(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.verbosity >= 1:
            self._status(trials, ended=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.verbosity >= 1:
            self._say(f"  trial {trial.trial_id} failed: {trial_error_text(trial)}")
            self._status(trials, ended=trial, errored=True)

    def _status(self, trials: list, ended: Any = None, errored: bool = False) -> None:
        """One status line; ``ended`` is the trial whose end triggered it (Tune still shows it
        as RUNNING while its callbacks run)."""
        counts = {"running": 0, "completed": 0, "stopped": 0, "failed": 0, "pending": 0}
        for t in trials:
            if t is ended:
                counts[trial_status(t.last_result, errored=errored)] += 1
            elif t.status == "RUNNING":
                counts["running"] += 1
            elif t.status == "PENDING":
                counts["pending"] += 1
            elif t.status == "ERROR":
                counts["failed"] += 1
            elif t.status == "TERMINATED":
                counts[trial_status(t.last_result, errored=False)] += 1
        total = f"/{self.total}" if self.total else ""
        done = counts["completed"] + counts["stopped"] + counts["failed"]
        best = f" | best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self._say(
            f"[{time.monotonic() - self.started:6.1f}s] {done}{total} done: "
            f"{counts['completed']} completed, {counts['stopped']} stopped, "
            f"{counts['failed']} failed; {counts['running']} running{best}"
        )

    def _say(self, line: str) -> None:
        self._last_print = time.monotonic()
        print(line, file=self.out, flush=True)
