"""What a notebook calls; the CLI is a thin layer over these functions.

Example:
    >>> from orchestrator import api
    >>> spec = api.validate("examples/digits.yaml", ["search.num_samples=2"])
    >>> result = api.run(spec)                                   # doctest: +SKIP
    >>> api.leaderboard("digits-default")[0].status              # doctest: +SKIP
    'completed'
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import PodiumError, UnknownName
from orchestrator.execution.runner import SweepResult, run_experiment
from orchestrator.registry.promotion import Target, checkpoint_in_sweep, choose, conclude
from orchestrator.registry.sweeps import (
    _policy_section,
    headline_metrics,
    leaderboard,
    leaderboard_marks,
    leaderboard_metrics,
    load_policy,
    rank_by,
    sweep_candidates,
)
from orchestrator.spec import NAME_RE, ExperimentSpec, load_spec
from tracking import keys
from tracking.errors import UntrustedModelError
from tracking.registry.lock import RegistryError
from tracking.registry.promote import rollback as _rollback
from tracking.selection import (
    policy_from,
)
from tracking.store import Store, resolve_tracking_uri
from workers.models import guarded_builder


def validate(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Load and validate a spec (the built-in default when ``path`` is None).

    Raises:
        SpecError: every problem, each with its path and bad value.
    """
    return load_spec(path, overrides)


def run(spec: ExperimentSpec, **kwargs: object) -> SweepResult:
    """Run a validated spec; see :func:`orchestrator.execution.runner.run_experiment` for the
    options."""
    return run_experiment(spec, **kwargs)  # type: ignore[arg-type]


_rank = rank_by(keys.TEST_ACCURACY)


def ui(
    tracking_uri: str | None = None,
    port: int = 5000,
    host: str = "127.0.0.1",
    workdir: str | os.PathLike = ".",
) -> subprocess.Popen:
    """Start the MLflow UI on the store and return the process (the caller waits or stops it).

    Job workers are switched off: ``mlflow server`` otherwise spawns ~2.4 GB of them.
    """
    uri = resolve_tracking_uri(tracking_uri, None, workdir)
    if not (uri.startswith(("sqlite:", "postgresql", "mysql", "file:")) or "://" not in uri):
        raise PodiumError(f"the UI needs a database store; {uri!r} is a server, open it directly")
    if uri.startswith("sqlite:///"):  # the UI opens (and makes) the store: its folder first
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    # Its own process group: the server's workers go with it (stop_process_group).
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and every process it started (it leads its own group): SIGTERM, then
    SIGKILL after ``grace_s``. ``mlflow ui`` serves from worker processes that would otherwise
    outlive it, still listening on the port."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            os.killpg(proc.pid, signal.SIGKILL)  # its workers, if the leader went first
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            pass
        return


# MLflow 3's UI opens in its GenAI view (traces, judges) unless the browser chose "Model
# training" before; a link with this parameter opens the training view: runs, models, registry.
TRAINING_VIEW = "workflowType=machine_learning"


def ui_links(
    base: str, tracking_uri: str | None = None, workdir: str | os.PathLike = ".", top: int = 5
) -> list[tuple[str, str]]:
    """``(experiment name, URL)`` for the newest ``top`` experiments of the store, each opening
    in the UI's model-training view; [] when the store has none yet."""
    uri = resolve_tracking_uri(tracking_uri, None, workdir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    found = Store(uri).client.search_experiments(
        max_results=top + 1, order_by=["creation_time DESC"]
    )
    return [
        (e.name, f"{base}/#/experiments/{e.experiment_id}?{TRAINING_VIEW}")
        for e in found
        if e.name != "Default"
    ][:top]


def promote(
    experiment: str,
    policy_path: str | None = None,
    tracking_uri: str | None = None,
    workdir: str | os.PathLike = ".",
) -> Any:
    """Re-decide the newest sweep of ``experiment`` offline from its logged runs and promote,
    by the same path as the end of ``podium run``
    (:func:`orchestrator.registry.promotion.conclude`).

    The winner under the policy (``policy_path``, else the sweep's own) is registered (once: a
    re-run finds its version) and becomes champion only if it beats the current one. Reports
    (leaderboard CSV, Pareto and parallel-coordinates plots, learning curves) are logged on the
    sweep's parent run.

    Returns:
        :class:`tracking.registry.promote.Promotion`.

    Raises:
        SpecError: unknown experiment or bad policy. PodiumError: no eligible trial, or the
            winner's model is neither logged nor in a checkpoint any more.
    """
    cands, settings, parent, store = sweep_candidates(experiment, tracking_uri, workdir)
    section = load_policy(policy_path) if policy_path else _policy_section(settings)
    policy = policy_from(section)
    split = settings.get("selection_split") or "val"
    _, decision = choose(cands, policy, split)
    if decision.winner is None:
        raise PodiumError(
            "nothing to promote: "
            + "; ".join(decision.reasons)
            + "".join(f"\n  {t}: {why}" for t, why in sorted(decision.rejected.items()))
        )
    target = Target(
        settings.get("model_name") or settings.get("name") or experiment,
        settings.get("alias") or "champion",
        split,
        settings.get("search_metric", keys.VAL_ACCURACY),
        {keys.TAG_EXPERIMENT: experiment},
    )
    tags = parent.data.tags
    done = conclude(
        store, parent.info.run_id, cands, policy, target, lambda t: checkpoint_in_sweep(tags, t)
    )
    assert done.promotion is not None
    return done.promotion


def rollback(
    model_name: str, tracking_uri: str | None = None, workdir: str | os.PathLike = "."
) -> tuple[str, str]:
    """Swap ``@champion`` and ``@previous`` of ``model_name``; returns (champion, previous)."""

    if not NAME_RE.match(model_name):  # before the promotion lock, whose name embeds it
        raise UnknownName(
            f"model name {model_name!r}: a registered model's name is letters, digits, '_', "
            "'.', '-' (at most 100)"
        )
    try:
        return _rollback(resolve_tracking_uri(tracking_uri, None, workdir), model_name)
    except RegistryError as e:
        raise PodiumError(str(e)) from e


def _serve_replicas(
    model_uri: str,
    uri: str,
    replicas: int,
    host: str,
    port: int,
    plugins: Sequence[str],
    address: str | None,
) -> None:
    """Fetch and check the model here (the same loader, refusing the same things), then hand its
    files to Ray Serve replicas (:mod:`orchestrator.registry.serve_replicas`)."""
    from orchestrator.registry.serve_replicas import model_files, serve_replicas
    from tracking.serving.scorers import load_scorer
    from tracking.serving.server import fetched

    builder = guarded_builder(plugins)
    with fetched(model_uri, uri) as folder:
        scorer = load_scorer(folder, builder)
        files = model_files(folder)

    def ready(url: str) -> None:
        print(
            f"serving {model_uri} ({scorer.description}) at {url} on {replicas} Ray Serve "
            "replica(s)",
            flush=True,
        )

    serve_replicas(files, replicas, host, port, builder, address, ready)


def serve(
    model_uri: str,
    port: int = 5001,
    host: str = "127.0.0.1",
    tracking_uri: str | None = None,
    workdir: str | os.PathLike = ".",
    plugins: Sequence[str] = (),
    replicas: int = 0,
    address: str | None = None,
    model_inputs: bool = False,
) -> None:
    """Serve ``models:/<name>@champion`` over HTTP (MLflow scoring protocol) until interrupted:
    in this process, or with ``replicas`` on that many Ray Serve replicas (on a local Ray, or
    the cluster at ``address``).

    Only ONNX and weights-only state dicts are loaded; a pickled model is refused. A state dict
    is rebuilt from its ``arch.json`` only for a built-in architecture or one from a module in
    ``plugins`` (what the operator trusts); anything else is refused before any import.
    A champion is the whole pipeline (raw inputs in, an answer per input out); with
    ``model_inputs`` the model alone is served (model inputs in, logits out).

    Raises:
        UntrustedModelError: the version's metadata names code that was not allowed (exit 2).
    """
    from tracking.serving.scorers import ServeError
    from tracking.serving.server import serve as _serve

    try:
        uri = resolve_tracking_uri(tracking_uri, None, workdir)
        if replicas:
            _serve_replicas(model_uri, uri, replicas, host, port, plugins, address)
        else:
            _serve(model_uri, port, host, uri, guarded_builder(plugins), model_inputs=model_inputs)
    except UntrustedModelError as e:
        raise UntrustedModelError(f"refusing to serve {model_uri}: {e}") from e
    except ServeError as e:
        raise PodiumError(str(e)) from e


# The notebook API: what a team calls from Python (the CLI is a thin layer over it).
__all__ = [
    "headline_metrics",
    "leaderboard",
    "leaderboard_marks",
    "leaderboard_metrics",
    "promote",
    "rank_by",
    "rollback",
    "run",
    "serve",
    "ui",
    "ui_links",
    "validate",
]
