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
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import PodiumError, Problem, SpecError, UnknownName
from orchestrator.execution.runner import SweepResult, run_experiment
from orchestrator.registry.leaderboard import TrialRow
from orchestrator.registry.promotion import Target, checkpoint_in_sweep, choose, conclude
from orchestrator.spec import NAME_RE, ExperimentSpec, load_spec
from tracking import keys
from tracking.constraints import parse_constraint
from tracking.errors import UntrustedModelError
from tracking.selection import (
    Candidate,
    check_policy,
    mark_candidates,
    policy_from,
    validation_twin,
    within_sweep,
)
from tracking.store import Store, resolve_tracking_uri


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


def leaderboard(
    experiment: str,
    tracking_uri: str | None = None,
    top: int | None = 10,
    workdir: str | os.PathLike = ".",
) -> list[TrialRow]:
    """The newest sweep's trials of ``experiment``, best first (completed trials by the sweep's
    first promotion objective; stopped and failed trials after them).

    Raises:
        UnknownName: no experiment of that name (the message lists the known ones).
    """
    store = existing_store(resolve_tracking_uri(tracking_uri, None, workdir), experiment)
    exp = store.client.get_experiment_by_name(experiment)
    if exp is None:
        raise _unknown_experiment(store, experiment)
    runs = store.client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return []
    children = store.child_runs(exp.experiment_id, runs[0].info.run_id)
    rows = [
        TrialRow(
            tid,
            r.info.run_id,
            r.data.tags.get(keys.TAG_STATUS, r.info.status.lower()),
            dict(r.data.metrics),
            dict(r.data.params),
            r.data.tags.get(keys.TAG_ERROR),
        )
        for tid, r in children.items()
    ]
    settings = _sweep_settings(store, runs[0])
    objective = _policy_section(settings)["objectives"][0]
    metric = objective["metric"]
    if settings.get("selection_split") != "test":  # ranked as the sweep chose: on validation
        twin = validation_twin(metric)
        metric = twin if any(twin in r.metrics for r in rows) else metric
    rows.sort(key=rank_by(metric, objective.get("mode", "max")))
    return rows[:top] if top else rows


def leaderboard_metrics(
    experiment: str, tracking_uri: str | None = None, workdir: str | os.PathLike = "."
) -> list[str]:
    """The metrics :func:`leaderboard` rows are shown with (:func:`headline_metrics` of the
    newest sweep's spec)."""
    store = Store(resolve_tracking_uri(tracking_uri, None, workdir))
    _, parent = _newest_sweep(store, experiment)
    settings = _sweep_settings(store, parent)
    return headline_metrics(_policy_section(settings), settings.get("search_metric"))


def rank_by(metric: str, mode: str = "max") -> Callable[[TrialRow], tuple]:
    """A sort key: completed trials first, best ``metric`` first (``mode``), then trial id."""

    def key(row: TrialRow) -> tuple:
        order = {"completed": 0, "stopped": 1}.get(row.status, 2)
        v = row.metrics.get(metric)
        score = (-v if mode == "max" else v) if v is not None and math.isfinite(v) else math.inf
        # Ties (common on small test splits) go by trial id, as selection breaks them, so the
        # top row is the trial the sweep promoted.
        return (order, score, row.trial_id)

    return key


_rank = rank_by(keys.TEST_ACCURACY)


def headline_metrics(section: dict[str, Any], search_metric: str | None = None) -> list[str]:
    """The metrics a leaderboard shows: every one the promotion policy ranks or constrains by,
    then the search metric."""
    out = [o["metric"] for o in section.get("objectives") or [] if isinstance(o, dict)]
    for text in section.get("constraints") or []:
        try:
            out.append(parse_constraint(text).metric)
        except ValueError:
            continue
    if search_metric:
        out.append(search_metric)
    return list(dict.fromkeys(out))


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


# --------------------------------------------------------------------------- selection & registry


def load_policy(path: str | Path) -> dict:
    """A ``--policy`` YAML file: the spec's ``promotion`` keys, bare or under ``promotion:``.

    Raises:
        SpecError: unreadable, not a mapping, or any bad key (all of them, as ``policy.<key>``).
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError([Problem("--policy", str(path), f"cannot read policy file: {e}")]) from e
    section = raw.get("promotion", raw) if isinstance(raw, dict) else raw
    if not isinstance(section, dict):
        raise SpecError([Problem("--policy", raw, "must be a mapping of promotion keys")])
    section = {"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}], **section}
    problems = [Problem(f"policy.{k}", v, m) for k, v, m in check_policy(section)]
    if problems:
        raise SpecError(problems)
    return section


def _newest_sweep(store: Store, experiment: str) -> tuple[str, Any]:
    """(experiment id, newest sweep parent run) of ``experiment``."""
    exp = store.client.get_experiment_by_name(experiment)
    runs = (
        []
        if exp is None
        else store.client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if exp is None:
        raise _unknown_experiment(store, experiment)
    if not runs:
        raise UnknownName(f"experiment {experiment!r} in {store.uri} has no sweep yet")
    return exp.experiment_id, runs[0]


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


def existing_store(uri: str, experiment: str) -> Store:
    """The store at ``uri`` for a command that only reads it: an embedded SQLite store that does
    not exist is not created (MLflow would make an empty one) but reported.

    Raises:
        UnknownName: the store does not exist, so neither does ``experiment``.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.exists():
            raise UnknownName(
                f"no experiment named {experiment!r} in {uri}: that store does not exist yet "
                "(podium run creates it; --tracking-uri or MLFLOW_TRACKING_URI name another)"
            )
    return Store(uri)


def _unknown_experiment(store: Store, experiment: str) -> UnknownName:
    known = sorted(e.name for e in store.client.search_experiments() if e.name != "Default")
    return UnknownName(
        f"no experiment named {experiment!r} in {store.uri}; known: {', '.join(known) or 'none'}"
    )


def _sweep_settings(store: Store, parent: Any) -> dict:
    """The promotion section of the sweep's spec snapshot ({} if none)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = store.client.download_artifacts(parent.info.run_id, keys.SPEC_ARTIFACT, tmp)
            spec = yaml.safe_load(Path(path).read_text()) or {}
    except Exception:  # noqa: BLE001 - an old sweep without a snapshot: defaults
        return {}
    search = spec.get("search") or {}
    return {
        "name": spec.get("name"),
        "search_metric": search.get("metric", keys.VAL_ACCURACY),
        **(spec.get("promotion") or {}),
    }


def sweep_candidates(
    experiment: str, tracking_uri: str | None = None, workdir: str | os.PathLike = "."
) -> tuple[list, dict, Any, Store]:
    """The newest sweep's trials as selection candidates, its promotion settings, its parent run
    and the store."""
    store = existing_store(resolve_tracking_uri(tracking_uri, None, workdir), experiment)
    exp_id, parent = _newest_sweep(store, experiment)
    children = store.child_runs(exp_id, parent.info.run_id)
    cands = [
        Candidate(
            tid,
            dict(r.data.metrics),
            r.data.tags.get(keys.TAG_STATUS, "failed"),
            r.info.run_id,
            dict(r.data.params),
        )
        for tid, r in sorted(children.items())
    ]
    return cands, _sweep_settings(store, parent), parent, store


def leaderboard_marks(
    experiment: str,
    tracking_uri: str | None = None,
    workdir: str | os.PathLike = ".",
    policy_path: str | None = None,
) -> dict:
    """Per trial id: Pareto-optimal or not, and why an excluded trial cannot win (the constraint
    it breaks, stopped, failed, NaN), under the sweep's promotion policy."""
    cands, settings, _, _ = sweep_candidates(experiment, tracking_uri, workdir)
    section = load_policy(policy_path) if policy_path else _policy_section(settings)
    policy = policy_from(section)
    if settings.get("selection_split") != "test":
        policy = within_sweep(policy, cands)
    return mark_candidates(cands, policy)


def _policy_section(settings: dict) -> dict:
    """The sweep's policy keys (its spec was validated; an unreadable one gives the default)."""
    default = {"objectives": [{"metric": keys.TEST_ACCURACY, "mode": "max"}]}
    section = {**default, **settings}
    return default if check_policy(section) else section


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
    from tracking.registry.lock import RegistryError
    from tracking.registry.promote import rollback as _rollback

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
    from workers.models import guarded_builder

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
    from workers.models import guarded_builder

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
