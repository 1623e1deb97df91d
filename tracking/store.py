"""MLflow set-up and run logging for a sweep: one parent run, one nested child run per trial.

Only the driver writes to MLflow; a sweep's trial runs go through
:class:`tracking.writer.RunWriter`.

Example:
    >>> uri = resolve_tracking_uri(None, None, workdir=tmp)          # doctest: +SKIP
    >>> store = Store(uri); exp_id = store.ensure_experiment("demo")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tracking import keys

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
