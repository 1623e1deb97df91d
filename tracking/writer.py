"""A sweep's trial runs written from a background thread: :class:`RunWriter` batches what the
driver logs (``log_batch``) and retries on failure, so a slow or restarting tracking server never
blocks or kills training; :meth:`RunWriter.close` flushes what is left."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracking import keys
from tracking.faults import StorageFault, storage_fault
from tracking.store import MAX_PARAM_LEN, Store

log = logging.getLogger(__name__)


@dataclass
class _TrialRun:
    run_id: str | None = None
    steps: dict[str, int] = field(default_factory=dict)  # metric -> highest step logged
    left_open: bool = False  # an existing run a killed driver never ended


class RunWriter:
    """Writes trial runs from a background thread, in order, retrying until they land.

    Every call only enqueues. Child runs are created lazily, so a trial can report before the
    tracking server is back. A metric step already logged is never logged again (a trial resumed
    from a checkpoint re-reports nothing twice).

    The queue is bounded: once ``max_backlog`` ops wait (the store has been down, or slower than
    the sweep, for that long), a call waits for room instead of growing the driver's memory
    without end. Trials then wait at their next report; none fails, and nothing is lost.
    """

    def __init__(
        self,
        store: Store,
        experiment_id: str,
        parent_run_id: str,
        existing: dict[str, Any] | None = None,
        retry_s: float = 1.0,
        linger_s: float = 0.25,
        max_backlog: int = 20_000,
        on_fault: Callable[[StorageFault], None] | None = None,
    ) -> None:
        self.store, self.experiment_id, self.parent_run_id = store, experiment_id, parent_run_id
        # A full disk (or a read-only store) is no outage: retrying cannot help until space is
        # freed. The writer stops writing (what it drops, --resume writes again from the trials'
        # checkpoints) and tells ``on_fault``, which ends the sweep.
        self.fault: StorageFault | None = None
        self.on_fault = on_fault
        self.retry_s = retry_s
        self.linger_s = linger_s
        # ~2 KB an op (a report's metrics, a trial's params): ~40 MB at most; a 30 s outage of
        # a 25-trials/s sweep of one-epoch trials queues ~4,000.
        self.max_backlog = max_backlog
        self.runs: dict[str, _TrialRun] = {}
        for trial_id, run in (existing or {}).items():
            steps = {}
            for metric in run.data.metrics:
                history = store.client.get_metric_history(run.info.run_id, metric)
                steps[metric] = max((m.step for m in history), default=-1)
            self.runs[trial_id] = _TrialRun(
                run.info.run_id, steps, left_open=run.info.status == "RUNNING"
            )
        self._queue: queue.Queue[tuple[str, str, Any] | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Condition()
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="podium-mlflow-writer", daemon=True)
        self._thread.start()

    # -- what the Tune callback calls (non-blocking)

    def trial_started(
        self, trial_id: str, name: str, params: dict[str, Any], tags: dict[str, str]
    ) -> None:
        self._put(trial_id, "start", (name, params, tags))

    def log_metrics(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        self._put(trial_id, "metrics", (metrics, step))

    def set_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        self._put(trial_id, "tags", tags)

    def rewind(self, trial_id: str, step: int) -> None:
        """Log the trial's steps after ``step`` again from now on: a PBT exploit restored it to
        another trial's epoch ``step``, and the epochs it trains from there are new results."""
        self._put(trial_id, "rewind", step)

    def trial_ended(self, trial_id: str, status: str) -> None:
        self._put(trial_id, "end", status)

    def run_id(self, trial_id: str) -> str | None:
        run = self.runs.get(trial_id)
        return run.run_id if run else None

    def left_open(self, trial_id: str) -> bool:
        """True for a run this writer found unfinished (its driver died before ending it)."""
        run = self.runs.get(trial_id)
        return bool(run and run.left_open)

    def flush(self, timeout_s: float = 120.0) -> bool:
        """Wait until everything queued has landed; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._lock.wait(min(left, 0.5))
        return True

    def close(self, timeout_s: float = 120.0) -> bool:
        """Write what is queued, then stop the writer; False if not all of it landed in time."""
        # The end marker also cuts short the writer's wait for more reports.
        self._queue.put(None)
        return self.flush(timeout_s)

    # -- the writer thread

    def _put(self, trial_id: str, op: str, arg: Any) -> None:
        with self._lock:
            if self._pending >= self.max_backlog:
                self._wait_for_room()
            self._pending += 1
        self._queue.put((trial_id, op, arg))

    def _wait_for_room(self) -> None:
        """Wait until the writer has worked the queue down to half the limit (not just below
        it: a sweep faster than its store then waits now and then, not at every report)."""
        log.warning(
            "%d MLflow writes are waiting (the tracking store is down or slower than the "
            "sweep); the sweep waits for it",
            self._pending,
        )
        started = time.monotonic()
        while self._pending > self.max_backlog // 2 and self._thread.is_alive():
            self._lock.wait(0.5)
        log.info("MLflow writes caught up after %.0f s", time.monotonic() - started)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            # Wait a moment for more: trials report one epoch at a time, and each store write is
            # a transaction (tens of ms on SQLite) taken from the driver that runs Tune.
            deadline = time.monotonic() + self.linger_s
            while len(batch) < 1000:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            count = len(batch)  # _apply_with_retry consumes the list
            self._apply_with_retry(_by_trial(batch))
            with self._lock:
                self._pending -= count
                self._lock.notify_all()

    def _apply_with_retry(self, batch: list[tuple[str, str, Any]]) -> None:
        delay = self.retry_s
        merged = True
        while batch and self.fault is None:
            try:
                self._apply(batch, merged)
                return
            except Exception as e:  # noqa: BLE001 - a store failure: keep the data, retry
                self.failures += 1
                fault = storage_fault(e)
                if fault is not None:
                    self._faulted(fault)
                    return
                if _permanent(e):
                    if merged:
                        # One value in a merged write was refused: write op by op to find it.
                        merged = False
                        continue
                    # The store refused this write itself (bad value): retrying cannot help.
                    log.error("MLflow refused %s for trial %s: %s", batch[0][1], batch[0][0], e)
                    del batch[0]
                    continue
                log.warning("MLflow write failed (%s); retrying in %.0fs", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _faulted(self, fault: StorageFault) -> None:
        self.fault = fault
        log.debug("MLflow store cannot write: %s", fault.detail)
        if self.on_fault is not None:
            self.on_fault(fault)

    def _apply(self, batch: list[tuple[str, str, Any]], merged: bool = True) -> None:
        """Apply ops in order, each trial's consecutive ops together; ops already applied are
        removed so a retry does not repeat them.

        ``merged``: a trial's ops become one ``log_batch`` (params, metrics and tags together)
        plus its end: on a SQLite store each write is a transaction of several ms of this
        process's CPU, taken from the driver that runs Tune, and a short trial's start, reports,
        tags and end usually arrive within one batch. Otherwise (to isolate a refused value) the
        ops go one by one, consecutive metric reports still merged.
        """
        while batch:
            trial_id = batch[0][0]
            run = self.runs.setdefault(trial_id, _TrialRun())
            n = 1
            while n < len(batch) and batch[n][0] == trial_id and batch[n - 1][1] != "end":
                n += 1
            if not merged:
                n = _leading_ops(batch[:n])
            self._write(run, trial_id, batch[:n])
            del batch[:n]

    def _write(self, run: _TrialRun, trial_id: str, ops: list[tuple[str, str, Any]]) -> None:
        """One trial's ops (an "end" only last): its run, one merged write, then its end."""
        from mlflow.entities import Metric, Param, RunTag

        start: tuple[str, dict[str, Any], dict[str, str]] | None = next(
            (arg for _, op, arg in ops if op == "start"), None
        )
        name, params, tags = start or (trial_id, {}, {})
        if run.run_id is None:
            # A trial can fail before Tune reports its start: give it a run all the same.
            created = self.store.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={
                    keys.TAG_PARENT_RUN: self.parent_run_id,
                    keys.TAG_ROLE: keys.ROLE_TRIAL,
                    keys.TAG_TRIAL_ID: trial_id,
                    **tags,
                },
            )
            run.run_id = created.info.run_id
        now = int(time.time() * 1000)
        rows: list[Metric] = []
        new_tags: dict[str, str] = {}
        steps = dict(run.steps)  # committed once the rows landed; a retry starts over
        for _, op, arg in ops:
            if op == "metrics":
                metrics, step = arg
                for k, v in metrics.items():
                    if step > steps.get(k, -1):  # a step already logged is never logged again
                        rows.append(Metric(k, float(v), now, step))
                        steps[k] = step
            elif op == "tags":
                new_tags.update({k: str(v) for k, v in arg.items()})
            elif op == "rewind":
                steps = {k: min(s, arg) for k, s in steps.items()}
        param_rows = [Param(k, _param_value(v)) for k, v in params.items()]
        tag_rows = [RunTag(k, v) for k, v in new_tags.items()]
        for m, p, t in _log_batches(rows, param_rows, tag_rows):
            self.store.client.log_batch(run.run_id, metrics=m, params=p, tags=t)
        run.steps = steps
        if ops[-1][1] == "end":
            self.store.client.set_terminated(run.run_id, ops[-1][2])


def _leading_ops(ops: list[tuple[str, str, Any]]) -> int:
    """How many of ``ops`` to write together when writing op by op: a run of metric reports, or
    one op."""
    n = 1
    while n < len(ops) and ops[0][1] == "metrics" and ops[n][1] == "metrics":
        n += 1
    return n


def _log_batches(metrics: list, params: list, tags: list) -> Iterable[tuple[list, list, list]]:
    """Split one trial's rows into ``log_batch`` calls within MLflow's limits (1,000 metrics,
    100 params, 100 tags, 1,000 rows in all per call); nothing to write, no call."""
    while metrics or params or tags:
        p, params = params[:100], params[100:]
        t, tags = tags[:100], tags[100:]
        room = 1000 - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


def _by_trial(batch: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """Each trial's ops together, in their own order (trials are independent), so its metric
    reports merge into one ``log_batch``."""
    first: dict[str, int] = {}
    for i, (trial_id, _, _) in enumerate(batch):
        first.setdefault(trial_id, i)
    return sorted(batch, key=lambda op: first[op[0]])


def _permanent(e: Exception) -> bool:
    """True for MLflow's own refusals (invalid value, missing run); False for outages."""
    from mlflow.exceptions import MlflowException

    code = getattr(e, "error_code", "")
    return isinstance(e, MlflowException) and code in (
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
    )


def _param_value(v: Any) -> str:
    text = str(v)
    return text if len(text) <= MAX_PARAM_LEN else text[: MAX_PARAM_LEN - 3] + "..."
