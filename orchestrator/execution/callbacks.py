"""Tune callbacks: the MLflow trial logger (driver side) and the live progress view.

Under Ray Client (``--address ray://...``) Tune's own driver runs as an actor on the head node,
not in ``podium run``: :class:`CallbackRelay` keeps these callbacks here and forwards Tune's
events to them from the head, so MLflow is still written only from the machine running
``podium run`` and the progress view still prints on its terminal.

Importing this module imports Ray Tune (seconds); the runner imports it only when a sweep starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.tune import Callback

from orchestrator.errors import RunError
from orchestrator.execution._ray.tuner import set_restored_callbacks
from orchestrator.execution.results import (
    STRING_KEYS,
    result_metrics,
    trial_error_text,
    trial_status,
)
from orchestrator.search.space import flatten_params, resolve
from tracking import keys
from tracking.writer import RunWriter

log = logging.getLogger(__name__)


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
        self.heard: set[str] = set()  # trials that reported or ended while this driver ran
        self._exploits: dict[str, list[dict[str, Any]]] = {}  # PBT exploits per trial, in order

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.heard.add(trial.trial_id)
        if self.writer.run_id(trial.trial_id) is not None:
            return  # resumed into its existing run
        params = flatten_params(resolve(self.template, trial.config))
        self.writer.trial_started(trial.trial_id, str(trial), params, {})

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.heard.add(trial.trial_id)
        if keys.EXPLOITED_FROM in result:
            self._record_exploit(trial.trial_id, str(result[keys.EXPLOITED_FROM]))
        # Epochs a killed driver lost between the trial's checkpoint and MLflow, first and in
        # order; the writer skips the steps the run already has.
        for epoch in result.get(keys.REPLAY) or ():
            self.writer.log_metrics(trial.trial_id, result_metrics(epoch), int(epoch[keys.EPOCH]))
        step = int(result.get(keys.EPOCH, result.get("training_iteration", 0)))
        self.writer.log_metrics(trial.trial_id, result_metrics(result), step)
        # Where the trial ran (first result) and the CPU its latency was measured on (last).
        new = {(trial.trial_id, k) for k in STRING_KEYS if k in result} - self._tagged
        if new:
            self._tagged |= new
            self.writer.set_tags(trial.trial_id, {STRING_KEYS[k]: str(result[k]) for _, k in new})

    def _record_exploit(self, trial_id: str, source: str) -> None:
        """Append a PBT exploit to the run's ``podium.exploits``: the trial went on from
        ``source`` ("<trial>@<epoch>"), so its epochs after that one are logged again as it
        trains them (with the ``hparam.*`` values PBT gave it)."""
        trial, _, epoch_text = source.rpartition("@")
        epoch = int(epoch_text or 0)
        done = self._exploits.setdefault(trial_id, [])
        done.append({"source": trial, "epoch": epoch})
        self.writer.rewind(trial_id, epoch)
        self.writer.set_tags(trial_id, {keys.TAG_EXPLOITS: json.dumps(done)})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.heard.add(trial.trial_id)
        self._end(trial.trial_id, trial.last_result, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.heard.add(trial.trial_id)
        self._end(trial.trial_id, trial.last_result, _error_text(trial))

    def needs_settling(self, trial_id: str) -> bool:
        """True for a trial Tune did not report on in this driver whose run was left open."""
        return trial_id not in self.heard and self.writer.left_open(trial_id)

    def settle(
        self,
        trial_id: str,
        last: dict[str, Any],
        error: str | None,
        history: list[dict[str, Any]],
    ) -> None:
        """Write the end of a trial that ended before a driver was killed, if MLflow lacks it.

        Tune restores such a trial as ended and reports nothing for it, so a run whose last
        epochs and end were still queued in the killed driver is completed from the trial's
        last checkpoint (``history``: its per-epoch metrics) and last result.
        """
        if not self.needs_settling(trial_id):
            return
        for epoch in history:
            self.writer.log_metrics(trial_id, result_metrics(epoch), int(epoch[keys.EPOCH]))
        if last:
            step = int(last.get(keys.EPOCH, last.get("training_iteration", 0)))
            self.writer.log_metrics(trial_id, result_metrics(last), step)
        self._end(trial_id, last, error)

    def _end(self, trial_id: str, last: dict[str, Any] | None, error: str | None) -> None:
        self._tagged.difference_update((trial_id, k) for k in STRING_KEYS)
        status = trial_status(last, errored=error is not None)
        tags = {keys.TAG_STATUS: status}
        if status == "failed":
            tags[keys.TAG_ERROR] = (error or str((last or {}).get(keys.FAILED)))[:5000]
        self.writer.set_tags(trial_id, tags)
        self.writer.trial_ended(trial_id, "FAILED" if status == "failed" else "FINISHED")


class FirstResult(_DriverOnly, Callback):
    """Sets ``event`` at the sweep's first trial result: the trial processes are up by then."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.event.set()


class ProgressView(_DriverOnly, Callback):
    """A live, one-line view of the sweep instead of Ray's log stream.

    ``verbosity`` 0 prints nothing, 1 a status line when a trial ends (and at most every 10 s),
    2 also one line per result. ``forgotten`` counts, by status, the ended trials that Tune no
    longer lists (the sweep's ledger, :mod:`orchestrator.execution._ray.memory`).
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        total: int | None,
        verbosity: int = 1,
        out: TextIO | None = None,
        forgotten: Mapping[str, int] | None = None,
    ) -> None:
        self.metric, self.mode, self.total = metric, mode, total
        # sys.stderr as it is now, not as it was at import (a test or a host may replace it).
        self.verbosity, self.out = verbosity, out or sys.stderr
        self.forgotten = forgotten if forgotten is not None else {}
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
            self._say(f"  trial {trial.trial_id} failed: {_error_text(trial)}")
            self._status(trials, ended=trial, errored=True)

    def _status(self, trials: list, ended: Any = None, errored: bool = False) -> None:
        """One status line; ``ended`` is the trial whose end triggered it (Tune still shows it
        as RUNNING while its callbacks run)."""
        counts = {"running": 0, "pending": 0, "completed": 0, "stopped": 0, "failed": 0}
        for status in ("completed", "stopped", "failed"):
            counts[status] += self.forgotten.get(status, 0)
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


# ------------------------------------------------------------------------------ Ray Client relay


@dataclass
class TrialView:
    """What Podium's callbacks read of a Tune trial, as plain data that travels from the head.

    ``error_text`` is read on the head, where the trial's error file is.
    """

    trial_id: str
    name: str
    status: str
    last_result: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error_text: str | None = None

    def __str__(self) -> str:
        return self.name


def _error_text(trial: Any) -> str:
    if isinstance(trial, TrialView) and trial.error_text:
        return trial.error_text
    return trial_error_text(trial)


def _view(trial: Any, full: bool = False, errored: bool = False) -> TrialView:
    """A trial as plain data: everything for the trial an event is about (``full``); for the
    others only what a status count needs, so an event's size does not grow with the results."""
    last = trial.last_result or {}
    return TrialView(
        trial.trial_id,
        str(trial),
        trial.status,
        dict(last) if full else {k: last[k] for k in (keys.DONE, keys.FAILED) if k in last},
        dict(trial.config) if full else {},
        trial_error_text(trial) if errored else None,
    )


_TUNE_ENV = ("TUNE_", "RAY_AIR_")


class _Mailbox:
    """Relayed events waiting for the client. A plain (one-call-at-a-time) actor, so the events
    one caller puts arrive in the order it put them."""

    def __init__(self) -> None:
        self._events: list[tuple] = []

    def put(self, events: list[tuple]) -> None:
        self._events.extend(events)

    def take(self) -> list[tuple]:
        events, self._events = self._events, []
        return events


class _Relay(Callback):
    """Runs inside Tune's driver on the head: turns each event into plain data for the client.

    It also carries the client's Tune settings (``TUNE_*`` and ``RAY_AIR_*`` variables, which
    Tune reads when a sweep starts) into that process: only Tune's driver reads them, while a
    job-wide ``runtime_env`` would make Ray build an environment for the client and every worker.
    """

    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox
        self.tune_env = {k: v for k, v in os.environ.items() if k.startswith(_TUNE_ENV)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for k, v in self.tune_env.items():  # the head's own settings win
            os.environ.setdefault(k, v)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("on_trial_start", trials, trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._send("on_trial_result", trials, trial, result=dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("on_trial_complete", trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send("on_trial_error", trials, trial, errored=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        import ray

        # Calls from one caller run in order: once this returns, every event has arrived.
        ray.get(self.mailbox.put.remote([]))

    def _send(
        self, method: str, trials: list, trial: Any, errored: bool = False, **kw: Any
    ) -> None:
        views = [_view(t, full=t is trial, errored=errored and t is trial) for t in trials]
        index = next(i for i, t in enumerate(trials) if t is trial)
        self.mailbox.put.remote([(method, index, views, kw)])  # not waited for: Tune goes on


class CallbackRelay:
    """The callbacks to hand Tune, and the context to run ``Tuner.fit()`` in.

    Without Ray Client: ``callbacks`` as they are, run by Tune in this process. Under Ray Client,
    ``Tuner`` runs Tune's driver as an actor on the head and pickles its callbacks there; ours
    hold the MLflow writer thread and this terminal, so Tune gets a relay instead, which sends
    each event through a mailbox actor, and a thread here replays the events on ``callbacks``.

    Example:
        >>> relay = CallbackRelay([ProgressView("val_accuracy", "max", 4)])  # doctest: +SKIP
        >>> config = tune.RunConfig(callbacks=relay.callbacks)  # doctest: +SKIP
        >>> tuner = tune.Tuner(train_fn, run_config=config)  # doctest: +SKIP
        >>> with relay:  # doctest: +SKIP
        ...     grid = tuner.fit()
    """

    def __init__(
        self,
        callbacks: list[Callback],
        poll_s: float = 0.2,
        with_tune: list[Callback] | None = None,
    ) -> None:
        """``with_tune``: callbacks that act on Tune's own state, so they always run wherever
        Tune's driver runs (they must pickle)."""
        import ray

        self.local = callbacks
        self.poll_s = poll_s
        self.remote = ray.util.client.ray.is_connected()
        self.mailbox: Any = None
        self.callbacks: list[Callback] = [*callbacks, *(with_tune or [])]
        if self.remote:
            self.mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
            self.callbacks = [_Relay(self.mailbox), *(with_tune or [])]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="podium-relay", daemon=True)

    def install(self, tuner: Any) -> None:
        """Put the callbacks on a restored tuner: they are not part of Tune's saved state (ours
        pickle as empty shells). ``Tuner.restore`` takes no run_config, hence the private API.

        Raises:
            RunError: under Ray Client, where the runner refuses ``--resume`` before this.
        """
        if self.remote:
            raise RunError("resuming a sweep over Ray Client is not supported")
        set_restored_callbacks(tuner, self.callbacks)

    def __enter__(self) -> CallbackRelay:
        if self.remote:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.remote:
            return
        self._stop.set()
        self._thread.join()
        import ray

        try:
            self._deliver()  # what arrived after the thread's last look
            ray.kill(self.mailbox)
        except Exception as e:  # noqa: BLE001 - the sweep's result matters more than its log
            log.error("lost the last trial events from the Ray Client head: %s", e)

    def _pump(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._deliver()
            except Exception as e:  # noqa: BLE001 - keep relaying; the run reports its outcome
                log.warning("could not fetch trial events from the Ray Client head: %s", e)

    def _deliver(self) -> None:
        import ray

        for method, index, views, kw in ray.get(self.mailbox.take.remote()):
            for callback in self.local:
                try:
                    getattr(callback, method)(0, views, views[index], **kw)
                except Exception:  # noqa: BLE001 - one bad event must not stop the others
                    log.exception("%s.%s failed", type(callback).__name__, method)
