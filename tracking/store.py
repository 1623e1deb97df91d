"""MLflow set-up and run logging for a sweep: one parent run, one nested child run per trial.

Only the driver writes to MLflow. Writes go through :class:`RunWriter`, a background thread that
batches them (``log_batch``) and retries on failure, so a slow or restarting tracking server never
blocks or kills training; :meth:`RunWriter.close` flushes what is left.

Example:
    >>> uri = resolve_tracking_uri(None, None, workdir=tmp)          # doctest: +SKIP
    >>> store = Store(uri); exp_id = store.ensure_experiment("demo")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracking import keys
from tracking.faults import StorageFault, storage_fault

log = logging.getLogger(__name__)

DEFAULT_DIR = "podium-runs"
ENV_URI = "MLFLOW_TRACKING_URI"
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


class TrackingError(Exception):
    """MLflow could not be reached or refused a write; the message says which store."""


def resolve_tracking_uri(
    flag: str | None, spec_uri: str | None, workdir: str | os.PathLike = "."
) -> str:
    """Where runs go: the CLI flag, then ``MLFLOW_TRACKING_URI``, then the spec, then an embedded
    SQLite store under ``./podium-runs/``."""
    uri = flag or os.environ.get(ENV_URI) or spec_uri
    if uri:
        return uri
    # Nothing is created here: a read-only command on a folder without a store must not make
    # one (Store creates the folder when it opens the store).
    return f"sqlite:///{Path(workdir, DEFAULT_DIR).resolve() / 'mlflow.db'}"


def default_artifact_location(uri: str) -> str | None:
    """Artifacts beside an embedded SQLite store (``podium-runs/artifacts``).

    Servers decide their own.
    """
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


class Store:
    """A thin adapter over ``MlflowClient`` for one tracking URI."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        if uri.startswith("sqlite:///"):
            path = Path(uri.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            seed_sqlite_store(path)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def ensure_experiment(self, name: str, artifact_location: str | None = None) -> str:
        """Create the experiment if needed (in the driver, before trials: parallel first use of a
        SQLite store races its schema migration) and return its id."""
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = artifact_location or default_artifact_location(self.uri)
                try:
                    return self.client.create_experiment(
                        name,
                        artifact_location=location,
                        tags={keys.TAG_EXPERIMENT_KIND: keys.EXPERIMENT_KIND_TRAINING},
                    )
                except MlflowException as e:
                    # Another driver started in the same folder created it between our read and
                    # our insert: that experiment is the one we want.
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise e
            return self._reuse(exp)
        except MlflowException as e:
            raise TrackingError(
                f"MLflow store {self.uri!r} refused experiment {name!r}: {e.message}"
            ) from e
        except Exception as e:  # connection errors come as requests/sqlalchemy exceptions
            raise TrackingError(f"cannot reach MLflow store {self.uri!r}: {e}") from e

    def _reuse(self, exp: Any) -> str:
        """An existing experiment, restored if deleted and tagged so MLflow's UI shows it as
        model training (not its GenAI view)."""
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if exp.tags.get(keys.TAG_EXPERIMENT_KIND) != keys.EXPERIMENT_KIND_TRAINING:
            self.client.set_experiment_tag(
                exp.experiment_id, keys.TAG_EXPERIMENT_KIND, keys.EXPERIMENT_KIND_TRAINING
            )
        return exp.experiment_id

    def start_parent(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(
            experiment_id, run_name=run_name, tags={keys.TAG_ROLE: keys.ROLE_SWEEP, **tags}
        )
        return run.info.run_id

    def find_parent(self, experiment_id: str, run_name: str) -> str | None:
        """The newest sweep run named ``run_name`` (what ``--resume`` continues)."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}' "
                f"and tags.`mlflow.runName` = '{run_name}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def child_runs(self, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
        """Existing child runs by trial id, for resuming into the same runs."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{keys.TAG_PARENT_RUN}` = '{parent_run_id}'",
            max_results=50000,
        )
        return {r.data.tags[keys.TAG_TRIAL_ID]: r for r in runs if keys.TAG_TRIAL_ID in r.data.tags}

    def log_artifact_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_artifact_file(
        self, run_id: str, path: str | os.PathLike, folder: str | None = None
    ) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def seed_sqlite_store(path: Path, cache_dir: Path | None = None) -> bool:
    """Start a new SQLite store as a copy of an empty, fully migrated schema; True if it did.

    MLflow builds a new SQLite store by running its whole chain of schema migrations, 2-3 s of
    every first ``podium run`` in a new folder. The result depends only on the MLflow version, so
    it is built once per version in Podium's cache (``$XDG_CACHE_HOME/podium``, else
    ``~/.cache/podium``) and copied. The copy holds tables only: MLflow adds its ``Default``
    experiment, with this store's own artifact root, when the store is first opened. Anything
    unexpected (an MLflow without that migration helper, an unwritable cache) leaves the store to
    MLflow, as before. The copy is put in write-ahead-log mode (:func:`_use_wal`).
    """
    if path.exists():
        return False
    try:
        template = _schema_template(cache_dir or _cache_dir())
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}.seed")
        shutil.copyfile(template, staged)
        try:
            _use_wal(staged)
            os.link(staged, path)  # atomic, and never over a store another process just made
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)
        return True
    except Exception:  # noqa: BLE001 - an optimisation only; MLflow creates the store itself
        log.debug("no schema template for %s", path, exc_info=True)
        return False


def _use_wal(path: Path) -> None:
    """Put a SQLite file in write-ahead-log mode (kept in the file, so every later connection,
    MLflow's and ``mlflow ui``'s, uses it).

    In SQLite's default rollback-journal mode a reader's open transaction blocks every commit:
    ``mlflow ui`` or a notebook reading the store mid-sweep stalls the sweep's writes until they
    fail with "database is locked". With a log, readers see a snapshot and the writer goes on; a
    commit is also one append and one sync instead of a journal file created, synced and deleted
    (MLflow commits several times per trial run). Each commit stays durable (``synchronous`` is
    left at its default, FULL). The log lives beside the store (``mlflow.db-wal``, ``-shm``) while
    a connection is open: copy a live store with SQLite's ``.backup``, not ``cp``.
    """
    import sqlite3

    db = sqlite3.connect(path)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        db.close()  # the last connection checkpoints the log and removes it
    if mode != "wal":  # e.g. a file system without shared memory: the store works as before
        log.debug("SQLite kept journal mode %r for %s", mode, path)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "podium")


def _schema_template(cache_dir: Path) -> Path:
    import mlflow
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    template = cache_dir / f"mlflow-{mlflow.__version__}-schema.db"
    if not template.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staged = cache_dir / f".{template.name}.{os.getpid()}"
        engine = sqlalchemy.create_engine(f"sqlite:///{staged}")
        try:
            _initialize_tables(engine)  # what MLflow runs for an empty database
        finally:
            engine.dispose()
        os.replace(staged, template)
    return template


# --------------------------------------------------------------------------- buffered writer


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


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def version_source(model_uri: str, uri: str | None) -> str:
    """Where a ``models:/<name>@<alias>`` (or ``/<version>``) version's files are, asked of a
    client on ``uri``'s own registry; any other URI is returned as it is.

    ``mlflow.artifacts.download_artifacts(models:/..., tracking_uri=...)`` resolves the name in
    the process-wide registry (MLflow 3's default: ``./mlflow.db``, which it creates), not in
    ``uri``'s: a teacher the sweep's validation had found was "not found" inside the sweep.

    Raises:
        mlflow.exceptions.MlflowException: no such model, alias or version.
    """
    m = _MODELS_URI.match(model_uri)
    if not m:
        return model_uri
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = m["name"]
    mv = (
        client.get_model_version_by_alias(name, m["alias"])
        if m["alias"]
        else client.get_model_version(name, m["version"])
    )
    return client.get_model_version_download_uri(name, mv.version)
