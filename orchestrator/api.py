"""What a notebook calls; the CLI is a thin layer over these functions.

Example:
    >>> from orchestrator import api
    >>> spec = api.validate("examples/digits.yaml", ["search.num_samples=2"])
    >>> result = api.run(spec)                                   # doctest: +SKIP
    >>> api.leaderboard("digits-default")[0].status              # doctest: +SKIP
    'completed'
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.errors import PodiumError, Problem, SpecError
from orchestrator.runner import SweepResult, TrialRow, run_experiment
from orchestrator.spec import ExperimentSpec, load_spec
from tracking import keys
from tracking.store import Store, resolve_tracking_uri


def validate(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Load and validate a spec (the built-in default when ``path`` is None).

    Raises:
        SpecError: every problem, each with its path and bad value.
    """
    return load_spec(path, overrides)


def run(spec: ExperimentSpec, **kwargs: object) -> SweepResult:
    """Run a validated spec; see :func:`orchestrator.runner.run_experiment` for the options."""
    return run_experiment(spec, **kwargs)  # type: ignore[arg-type]


def leaderboard(experiment: str, tracking_uri: str | None = None, top: int | None = 10,
                workdir: str | os.PathLike = ".") -> list[TrialRow]:
    """The newest sweep's trials of ``experiment``, best first (completed trials by test accuracy,
    then validation accuracy; stopped and failed trials after them).

    Raises:
        SpecError: no experiment of that name (the message lists the known ones).
    """
    store = Store(resolve_tracking_uri(tracking_uri, None, workdir))
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        known = sorted(e.name for e in store.client.search_experiments())
        raise SpecError([Problem("EXPERIMENT", experiment,
                                 f"no experiment {experiment!r} in {store.uri}; known: {', '.join(known) or 'none'}")])
    runs = store.client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return []
    children = store.child_runs(exp.experiment_id, runs[0].info.run_id)
    rows = [TrialRow(tid, r.info.run_id, r.data.tags.get(keys.TAG_STATUS, r.info.status.lower()),
                     dict(r.data.metrics), dict(r.data.params), r.data.tags.get(keys.TAG_ERROR))
            for tid, r in children.items()]
    rows.sort(key=_rank)
    return rows[:top] if top else rows


def _rank(row: TrialRow) -> tuple:
    order = {"completed": 0, "stopped": 1}.get(row.status, 2)

    def neg(key: str) -> float:
        v = row.metrics.get(key)
        return -v if v is not None and math.isfinite(v) else math.inf

    return (order, neg(keys.TEST_ACCURACY), neg(keys.VAL_ACCURACY), row.trial_id)


def ui(tracking_uri: str | None = None, port: int = 5000, host: str = "127.0.0.1",
       workdir: str | os.PathLike = ".") -> subprocess.Popen:
    """Start the MLflow UI on the store and return the process (the caller waits or stops it).

    Job workers are switched off: ``mlflow server`` otherwise spawns ~2.4 GB of them.
    """
    uri = resolve_tracking_uri(tracking_uri, None, workdir)
    if not (uri.startswith(("sqlite:", "postgresql", "mysql", "file:")) or "://" not in uri):
        raise PodiumError(f"the UI needs a database store; {uri!r} is a server, open it directly")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port)]
    return subprocess.Popen(cmd, env=env)
