"""Runs a sweep: MLflow set-up in the driver, Ray Tune fan-out, selection, registry promotion.

The lifecycle, in order: resolve the tracking URI → create the experiment and the parent run
(before any trial, so trials never race the store's first use) → start or join Ray → Tuner.fit
(trials report per epoch; the driver-side callback logs to MLflow through a buffered writer) →
flush the writer → select the best trial (pure) → log and register its model → finish the parent.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from orchestrator.errors import Problem, RunError, SpecError, StorageFailure
from orchestrator.ledger import (
    FinishedTrial,
    TrialLedger,
    checkpoint_location,
    last_result,
    open_ledger,
)
from orchestrator.plugins import make_importable, runtime_env_for
from orchestrator.promotion import promote_trial, winner_checkpoint
from orchestrator.ray_session import check_address, collector_paused, init_ray, shutdown_ray
from orchestrator.results import result_metrics, trial_error_text
from orchestrator.schedulers import (
    build_param_space,
    build_scheduler,
    checkpoints_to_keep,
    has_grid,
)
from orchestrator.space import flatten_params, resolve, template_of
from orchestrator.spec import AUTO_GPU, ExperimentSpec
from tracking import keys
from tracking.faults import StorageFault, remedy, storage_fault
from tracking.registry import (
    Promotion,
    warm_up_model_logging,
)
from tracking.selection import Candidate, Decision, Policy, policy_from, select_best, within_sweep
from tracking.store import RunWriter, Store, TrackingError, resolve_tracking_uri
from workers import storage

log = logging.getLogger(__name__)

# Tune's own per-trial CSV/JSON/TensorBoard loggers duplicate what MLflow records and cost time on
# every report; its checkpoint-sync warning fires on every short sweep.
_QUIET_TUNE = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
}


@dataclass
class TrialRow:
    trial_id: str
    run_id: str | None
    status: str
    metrics: dict[str, float]
    params: dict[str, Any]
    error: str | None = None


@dataclass
class SweepResult:
    """What one ``podium run`` produced."""

    experiment: str
    tracking_uri: str
    parent_run_id: str
    rows: list[TrialRow]
    decision: Decision
    promotion: Promotion | None
    tracking_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.rows)


def run_experiment(
    spec: ExperimentSpec,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    resume: bool = False,
    verbosity: int = 1,
    workdir: str | os.PathLike = ".",
    keep_finished: bool = False,
    more: int = 0,
) -> SweepResult:
    """Run ``spec`` as one sweep and promote its best model.

    Args:
        spec: a validated spec (``orchestrator.spec.load_spec``).
        tracking_uri: overrides ``MLFLOW_TRACKING_URI`` and the spec.
        address: a Ray cluster to join (overrides ``cluster.address``); None starts a local Ray.
        resume: continue the newest interrupted sweep of this experiment (same trials, same runs).
        more: extend the newest finished sweep of this experiment by ``more`` trials, under the
            same parent run, its searcher seeded with the sweep's own trials; the winner is
            chosen among all of them.
        verbosity: 0 quiet, 1 progress lines, 2 one line per result plus worker logs.
        workdir: where the embedded store (``podium-runs/``) lives when no URI is given.
        keep_finished: let Ray Tune keep every ended trial in the driver's memory and in its
            experiment state, as plain Tune does (tens of KB per trial). By default Podium takes
            a terminated trial out of Tune once the sweep's ledger has it
            (:mod:`orchestrator.tune_memory`), so the driver's memory stays flat; the ledger is
            written either way.

    Raises:
        RunError: Ray or MLflow failed, or there is no sweep to resume.

    Example:
        >>> from orchestrator.spec import load_spec
        >>> result = run_experiment(load_spec(overrides=["search.num_samples=2"]))  # doctest: +SKIP
        >>> result.promotion.model_uri  # doctest: +SKIP
        'models:/digits-classifier@champion'
    """
    for k, v in _QUIET_TUNE.items():
        os.environ.setdefault(k, v)
    clock = _Phases()
    make_importable(spec.plugin_roots)  # a notebook may run a spec parsed from elsewhere
    uri = resolve_tracking_uri(tracking_uri, spec.tracking.uri, workdir)
    _check_teachers(spec, uri)
    # Downloaded and checked before Ray starts: a teacher whose metadata names code not in
    # this spec is a spec error, like one that does not resolve.
    teachers = _fetch_teachers(spec, uri, workdir)
    ray_address = address or spec.cluster.address
    check_address(ray_address or os.environ.get("RAY_ADDRESS"), resume)
    if more and (has_grid(spec) or spec.search.searcher == "grid"):
        raise SpecError(
            [Problem("search.searcher", "grid", "--more adds sampled trials; a grid has run them")]
        )
    # Ray Tune's import (seconds) happens while Ray starts its processes and MLflow migrates a
    # new store.
    threading.Thread(target=_preload, name="podium-preload", daemon=True).start()
    if resume or more:  # nothing to resume or extend is an error before Ray starts
        sweep = _prepare_tracking(spec, uri, resume, workdir, more)
        started_ray = init_ray(ray_address, verbosity, runtime_env_for(spec))
    else:
        # A new SQLite store migrates its schema (seconds) while Ray starts its processes.
        with ThreadPoolExecutor(1, thread_name_prefix="podium-tracking") as pool:
            prepared = pool.submit(_prepare_tracking, spec, uri, resume, workdir)
            try:
                started_ray = init_ray(ray_address, verbosity, runtime_env_for(spec))
            except RunError:
                _discard_parent(prepared)
                raise
            try:
                sweep = prepared.result()
            except (RunError, SpecError):
                shutdown_ray(started_ray)
                raise
    store, experiment_id, parent_id = sweep.store, sweep.experiment_id, sweep.parent_id
    ray_path = sweep.ray_path
    clock.mark("start")  # Ray up, store and parent run ready
    from orchestrator.fail_fast import FailFast, clear_faults, post_fault

    clear_faults()
    writer = RunWriter(
        store, experiment_id, parent_id, sweep.existing, on_fault=lambda f: post_fault(f.as_text())
    )
    template = template_of(spec)
    extras: dict[str, Any] = {
        "teachers": teachers,
        "seeding": sweep.seeding,
        "more": more,
        # A sampler seeded as the earlier trials' was would draw their configs again.
        "seed_offset": len(sweep.seeding.points) if sweep.seeding else 0,
    }
    # What the end of the run needs (MLflow's PyTorch flavor, the ONNX exporter, matplotlib)
    # is made ready while trials train, once the first result shows the trial processes are up:
    # start-up is bound by this process's one interpreter lock, and the first trials' imports
    # by the CPUs; a running sweep mostly waits on its trials.
    first_result = threading.Event()
    warming = threading.Thread(
        target=_warm_up_conclusion,
        args=(spec.promotion.enabled, first_result),
        name="podium-warm-up",
        daemon=True,
    )
    warming.start()
    stopper = FailFast(threshold=min(3, spec.search.num_samples))
    fault: StorageFault | None = None
    try:
        finished = _fit(
            spec,
            template,
            writer,
            ray_path,
            resume,
            verbosity,
            extras,
            first_result,
            keep_finished,
            stopper,
        )
    except BaseException as e:  # Ctrl-C too: Ray's processes must not outlive the driver
        with collector_paused(started_ray):
            shutdown_ray(started_ray)
        fault = fault_of(e)
        if fault is None:
            if isinstance(e, Exception):
                raise RunError(f"the sweep failed: {e}") from e
            raise
    finally:
        first_result.set()  # a sweep that reported nothing still ends the warm-up's wait
        clock.mark("sweep")
        if not writer.close(timeout_s=300):
            log.error("some MLflow writes did not land within 300 s")
        clock.mark("flush")
    if writer.fault is not None:
        raise _failed_on(
            store, experiment_id, parent_id, writer.fault, "the MLflow store", _store_path(uri)
        )
    if fault is not None:
        what = "the sweep's checkpoints"
        raise _failed_on(store, experiment_id, parent_id, fault, what, ray_path)
    finished = {**_earlier_trials(sweep.earlier), **finished}
    if sweep.seeding is not None:
        store.client.set_tag(parent_id, keys.TAG_WARM_START, sweep.seeding.tag())
    # Ray's processes take a second or two to stop; selection, promotion and the reports need
    # nothing from Ray (checkpoints are files), so they go on meanwhile.
    with collector_paused(started_ray):
        stopping = threading.Thread(
            target=shutdown_ray, args=(started_ray,), name="podium-ray-stop"
        )
        stopping.start()
        warming.join()  # matplotlib and model logging are not to be used from two threads at once
        try:
            result = _conclude(spec, uri, store, parent_id, finished, template, writer, clock)
            result.extra["stopped"] = stopper.reason
            if sweep.seeding is not None:
                result.extra["seeding"] = sweep.seeding
            return result
        except Exception as e:
            late = storage_fault(e)
            if late is None:
                raise
            in_store = "database" in late.detail  # SQLite's words; else the artifact store
            where = _store_path(uri) if in_store else _artifact_root(store, experiment_id)
            raise _failed_on(store, experiment_id, parent_id, late, "the model", where) from e
        finally:
            stopping.join()


def fault_of(error: BaseException) -> StorageFault | None:
    """The storage fault that ended the sweep: reported by a trial or the MLflow writer (the
    stopper's :class:`StorageFaultStop`), or met by Tune's driver itself."""
    from orchestrator.fail_fast import StorageFaultStop
    from tracking.faults import from_text

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, StorageFaultStop):
            return from_text(cause.fault)
        cause = cause.__cause__ or cause.__context__
    return storage_fault(error)


def _artifact_root(store: Store, experiment_id: str) -> str:
    try:
        return str(store.client.get_experiment(experiment_id).artifact_location)
    except Exception:  # noqa: BLE001 - only for the message
        return "the artifact store"


def _store_path(uri: str) -> str:
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri


def _failed_on(
    store: Store, experiment_id: str, parent_id: str, fault: StorageFault, what: str, where: str
) -> StorageFailure:
    """The error that ends a sweep that could not write ``what`` under ``where``; the parent
    run and every child run still RUNNING end FAILED with the reason, where the store can
    still take it (a full SQLite store may not: ``--resume`` then ends them)."""
    failure = StorageFailure(f"{fault.cause} writing {what} ({where})", remedy(fault))
    reason = {
        keys.TAG_STATUS: "failed",
        keys.TAG_ERROR: f"{failure.what}: {fault.detail}",
        keys.TAG_FAULT: fault.as_text(),
    }
    try:
        for run in store.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{keys.TAG_PARENT_RUN}` = '{parent_id}' "
            "and attributes.status = 'RUNNING'",
            max_results=50000,
        ):
            _end_failed(store, run.info.run_id, reason)
        _end_failed(store, parent_id, reason)
    except Exception:  # noqa: BLE001 - the store may be what is full; the error says the rest
        log.debug("could not mark the sweep's runs failed", exc_info=True)
    return failure


def _end_failed(store: Store, run_id: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        store.client.set_tag(run_id, k, v)
    store.end_run(run_id, "FAILED")


def _conclude(
    spec: ExperimentSpec,
    uri: str,
    store: Store,
    parent_id: str,
    finished: dict[str, FinishedTrial],
    template: dict[str, Any],
    writer: RunWriter,
    clock: _Phases,
) -> SweepResult:
    """After the sweep: select, promote, publish the reports, end the parent run."""
    rows = _rows(finished, template, writer)
    policy = policy_from(asdict(spec.promotion))
    candidates = [Candidate(r.trial_id, r.metrics, r.status, r.run_id, r.params) for r in rows]
    # The winner is chosen on validation; the test split decides only against the champion.
    chooser = selection_policy(spec, policy, candidates)
    decision = select_best(candidates, chooser)
    promotion = None
    if spec.promotion.enabled and decision.winner is not None:
        checkpoint = finished[decision.winner.trial_id].checkpoint
        if checkpoint is None:
            raise RunError(f"the winner {decision.winner.trial_id} left no checkpoint to promote")
        with winner_checkpoint(decision.winner.trial_id, checkpoint) as folder:
            promotion = promote_trial(spec, uri, decision, str(folder), policy)
    clock.mark("promote")
    _publish(store, parent_id, rows, candidates, chooser, decision, promotion, spec.search.metric)
    store.end_run(parent_id, "FINISHED" if decision.winner is not None else "FAILED")
    clock.mark("publish")
    first = chooser.objectives[0]
    extra = {"timings_s": clock.seconds, "ranked_by": (first.metric, first.mode)}
    return SweepResult(spec.name, uri, parent_id, rows, decision, promotion, writer.failures, extra)


class _Phases:
    """Wall seconds per phase of a run, for ``--verbose`` and the overhead benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


@dataclass
class _Sweep:
    """The tracking side of a sweep, set up in the driver before any trial starts."""

    store: Store
    experiment_id: str
    parent_id: str
    ray_path: str  # where Tune keeps this run of the sweep's trials
    existing: dict[str, Any]  # child runs by trial id (resume, --more)
    earlier: list[str] = field(default_factory=list)  # Tune folders of the sweep's earlier runs
    seeding: Any = None  # orchestrator.warm_start.Seeding: earlier trials for the searcher


def _prepare_tracking(
    spec: ExperimentSpec, uri: str, resume: bool, workdir: str | os.PathLike, more: int = 0
) -> _Sweep:
    """The store, experiment and parent run, created in the driver before any trial starts.

    Raises:
        RunError: MLflow could not be reached, or there is nothing to resume or extend.
        SpecError: ``search.warm_start`` names an experiment the store lacks.
    """
    from orchestrator import warm_start

    try:
        store = Store(uri)
        experiment_id = store.ensure_experiment(spec.name, spec.tracking.artifact_location)
        seeding = None
        if spec.search.warm_start and not resume:
            seeding = warm_start.from_experiment(store, spec, template_of(spec))
        if more:
            sweep = _extend_parent(store, experiment_id, spec, more)
            own = warm_start.from_sweep(
                store, spec, template_of(spec), experiment_id, sweep.parent_id
            )
            if seeding is not None:
                own.points += seeding.points
                own.skipped += seeding.skipped
                own.source += f" and {seeding.source}"
            sweep.seeding = own
            return sweep
        parent_id, ray_path, existing = _parent_run(store, experiment_id, spec, resume, workdir)
        earlier = _earlier_paths(store, parent_id) if resume else []
    except TrackingError as e:
        raise RunError(str(e)) from e
    return _Sweep(store, experiment_id, parent_id, ray_path, existing, earlier, seeding)


def _earlier_paths(store: Store, parent_id: str) -> list[str]:
    tags = store.client.get_run(parent_id).data.tags
    return list(json.loads(tags.get(keys.TAG_EARLIER_RAY_PATHS, "[]")))


def _extend_parent(store: Store, experiment_id: str, spec: ExperimentSpec, more: int) -> _Sweep:
    """``--more``: the newest finished sweep, reopened, its trials so far in ``earlier``, and a
    new Tune folder for the added trials (Tune cannot add samples to a finished experiment)."""
    parent = store.find_parent(experiment_id, spec.name)
    if parent is None:
        raise RunError(f"nothing to extend: experiment {spec.name!r} has no sweep run")
    run = store.client.get_run(parent)
    if run.info.status == "RUNNING" or keys.TAG_FAULT in run.data.tags:
        raise RunError(
            f"the newest sweep of {spec.name!r} did not finish: finish it with --resume first"
        )
    path = run.data.tags.get(keys.TAG_RAY_PATH, "")
    earlier = [*_earlier_paths(store, parent), path]
    new_path = f"{earlier[0]}-more{len(earlier)}"
    store.client.set_tag(parent, keys.TAG_EARLIER_RAY_PATHS, json.dumps(earlier))
    store.client.set_tag(parent, keys.TAG_RAY_PATH, new_path)
    store.client.update_run(parent, status="RUNNING")
    children = store.child_runs(experiment_id, parent)
    return _Sweep(store, experiment_id, parent, new_path, children, earlier)


def _earlier_trials(paths: list[str]) -> dict[str, FinishedTrial]:
    """The trials of a sweep's earlier runs (before ``--more``), from their ledgers."""
    out: dict[str, FinishedTrial] = {}
    for path in paths:
        out.update(open_ledger(path).entries())
    return out


def _preload() -> None:
    import orchestrator.callbacks  # noqa: F401  (Ray Tune)


def _warm_up_conclusion(promotion: bool, first_result: threading.Event) -> None:
    first_result.wait()
    try:
        import tracking.report

        tracking.report.warm_up()
        if promotion:
            import torch.onnx  # noqa: F401  (the warm-up does not export to ONNX)

            warm_up_model_logging()
    except Exception:  # noqa: BLE001 - a warm-up only; the real work reports its own errors
        log.debug("warm-up failed", exc_info=True)


def _check_teachers(spec: ExperimentSpec, uri: str) -> None:
    """Registry teachers (``distill`` from ``models:/...``) must resolve before anything starts.

    Raises:
        SpecError: each teacher URI that does not resolve in the tracking store.
    """
    from tracking.onnx_model import check_teacher
    from workers.recipes import registry_teachers

    problems = [
        Problem("recipe.teacher", t, msg)
        for t in registry_teachers(spec.recipe)
        if (msg := check_teacher(t, uri))
    ]
    if problems:
        raise SpecError(problems)


def _fetch_teachers(spec: ExperimentSpec, uri: str, workdir: str | os.PathLike) -> dict[str, str]:
    """Download registry teachers once, in the driver: workers never talk to MLflow.

    They go where the trials' checkpoints go: beside them in a folder (every node of a cluster
    mounts ``cluster.storage_path``), or uploaded to object storage, from which each trial
    process downloads them once.
    """
    from workers.recipes import registry_teachers

    uris = registry_teachers(spec.recipe)
    if not uris:
        return {}
    shared = spec.cluster.storage_path
    if not (shared and storage.is_uri(shared)):
        base = Path(shared or Path(workdir, "podium-runs")).resolve()
        return _trusted_teachers(spec, uris, uri, base / "teachers")
    with tempfile.TemporaryDirectory(prefix="podium-teachers-") as tmp:
        fetched = _trusted_teachers(spec, uris, uri, Path(tmp))
        out = {}
        for teacher, folder in fetched.items():
            out[teacher] = storage.join(storage.normalise(shared), "teachers", Path(folder).name)
            storage.upload(folder, out[teacher])
        return out


def _trusted_teachers(spec: ExperimentSpec, uris: list[str], uri: str, dst: Path) -> dict[str, str]:
    """Registry teachers downloaded into ``dst``, refused (a spec error) where their metadata
    names code this spec does not."""
    from tracking.onnx_model import fetch_teachers

    fetched = fetch_teachers(uris, uri, dst)
    problems = [
        Problem("recipe.teacher", teacher, why)
        for teacher, folder in fetched.items()
        if (why := untrusted_teacher(Path(folder), own_plugins(spec)))
    ]
    if problems:
        raise SpecError(problems)
    return fetched


def own_plugins(spec: ExperimentSpec) -> tuple[str, ...]:
    """The ``module:function`` references the spec itself names: the only code a registry
    teacher's metadata may name."""
    from orchestrator.plugins import plugin_refs

    return tuple(dict.fromkeys(ref for _, ref, _ in plugin_refs(spec)))


def untrusted_teacher(folder: Path, plugins: tuple[str, ...]) -> str | None:
    """Why a downloaded teacher must not be used, or None. Its ONNX file needs no code; without
    one, its ``arch.json`` may name only a built-in architecture or one of ``plugins``."""
    import json

    from workers.models import check_model_metadata

    if any(folder.rglob("*.onnx")):
        return None
    arch = next(folder.rglob(keys.ARCH_ARTIFACT), None)
    if arch is None:
        return None  # no rebuildable metadata: the trial reports what the folder lacks
    try:
        cfg = json.loads(arch.read_text())
    except (OSError, ValueError) as e:
        return f"its {keys.ARCH_ARTIFACT} is not JSON: {e}"
    why = check_model_metadata(cfg, plugins)
    return f"refusing its {keys.ARCH_ARTIFACT}: {why}" if why else None


def _parent_run(
    store: Store, experiment_id: str, spec: ExperimentSpec, resume: bool, workdir: str | os.PathLike
) -> tuple[str, str, dict[str, Any]]:
    """(parent run id, Tune experiment path, existing child runs by trial id)."""
    if resume:
        parent = store.find_parent(experiment_id, spec.name)
        if parent is None:
            raise RunError(f"nothing to resume: experiment {spec.name!r} has no sweep run")
        run = store.client.get_run(parent)
        path = run.data.tags.get(keys.TAG_RAY_PATH)
        if not path or not storage.exists(path):
            raise RunError(f"cannot resume {spec.name!r}: its Tune state {path!r} is gone")
        cut = _cut_off_state(path)
        if cut is not None:
            # Tune would start the sweep afresh over it, and lose the trials it had.
            raise RunError(
                f"cannot resume {spec.name!r}: Tune's saved state {str(cut)!r} is empty (the "
                "driver was killed while Tune copied it there); the trials that ended are in "
                "MLflow; run the sweep again without --resume"
            )
        store.client.update_run(parent, status="RUNNING")
        children = store.child_runs(experiment_id, parent)
        if _take_up_faulted(store, [run, *children.values()]):
            children = store.child_runs(experiment_id, parent)
        return parent, path, children
    parent = store.start_parent(
        experiment_id,
        spec.name,
        {keys.TAG_EXPERIMENT: spec.name, keys.TAG_SPEC_HASH: spec.spec_hash()},
    )
    base = storage.normalise(
        spec.cluster.storage_path or Path(workdir, "podium-runs", "ray_results")
    )
    path = storage.join(base, f"{spec.name}-{parent[:8]}")
    store.client.set_tag(parent, keys.TAG_RAY_PATH, path)
    store.log_artifact_text(parent, spec.to_yaml(), keys.SPEC_ARTIFACT)
    store.client.log_batch(parent, params=[])  # params live on the child runs
    return parent, path, {}


def _cut_off_state(folder: str) -> str | None:
    """The newest Tune state file in ``folder`` if a kill cut its copy off (left it empty)."""
    states = [n for n in storage.names(folder) if fnmatch(n, "experiment_state-*.json")]
    newest = storage.join(folder, states[-1]) if states else None
    return newest if newest is not None and storage.size(newest) == 0 else None


def _take_up_faulted(store: Store, runs: list[Any]) -> bool:
    """Runs a storage fault ended FAILED (:func:`_failed_on`) are unfinished, not failed:
    open again, without the fault's status and error, for the resumed sweep to end. True if
    there were any."""
    faulted = [r for r in runs if keys.TAG_FAULT in r.data.tags]
    for run in faulted:
        for key in (keys.TAG_FAULT, keys.TAG_STATUS, keys.TAG_ERROR):
            if key in run.data.tags:
                store.client.delete_tag(run.info.run_id, key)
        store.client.update_run(run.info.run_id, status="RUNNING")
    return bool(faulted)


def _discard_parent(prepared: Any) -> None:
    """Delete the parent run a sweep that never started created (it would stay RUNNING)."""
    try:
        sweep = prepared.result()
    except (RunError, SpecError):
        return  # tracking failed too; nothing was created
    sweep.store.client.delete_run(sweep.parent_id)


def _fit(
    spec: ExperimentSpec,
    template: dict[str, Any],
    writer: RunWriter,
    ray_path: str,
    resume: bool,
    verbosity: int,
    extras: dict[str, Any],
    first_result: threading.Event,
    keep_finished: bool = False,
    stopper: Any = None,
) -> dict[str, FinishedTrial]:
    """Run (or resume) the Tune sweep; every trial that ended, by id. ``stopper`` (a
    :class:`orchestrator.fail_fast.FailFast`) ends a new sweep whose trials all fail alike."""
    import ray
    from ray import tune

    from orchestrator.callbacks import CallbackRelay, FirstResult, MlflowTrialLogger, ProgressView
    from orchestrator.tune_memory import ForgetFinishedTrials, SilentTrialProgress

    resources = _resources(spec, template, verbosity)
    trainable = tune.with_resources(make_trainable(template, spec, extras), resources)
    ledger = open_ledger(ray_path)
    # Under Ray Client, Tune's driver runs on the head: the relay keeps the MLflow logger and the
    # progress view here, and finished trials there only lose their statistics (the ledger is
    # here).
    remote = ray.util.client.ray.is_connected()
    forget = ForgetFinishedTrials(None if remote else ledger, keep=keep_finished)
    logger = MlflowTrialLogger(writer, template)
    relay = CallbackRelay(
        [
            logger,
            ProgressView(
                spec.search.metric,
                spec.search.mode,
                None if has_grid(spec) else extras.get("more") or spec.search.num_samples,
                verbosity,
                # Kept trials are still in Tune's list; counting the ledger too would count
                # them twice.
                forgotten=None if keep_finished else ledger.counts,
            ),
            FirstResult(first_result),
        ],
        with_tune=[forget] if keep_finished else [forget, SilentTrialProgress()],
    )
    if resume:
        tuner = tune.Tuner.restore(
            ray_path, trainable=trainable, resume_errored=True, param_space=None
        )
        relay.install(tuner)
        with relay:
            grid = tuner.fit()
        # After the relay's last progress line: the ledger then completes, and the view (which
        # counts kept trials and the ledger's) would count the kept ones twice.
        finished = _finished_trials(grid, ledger)
        _settle_ended_trials(finished, logger)
        return finished
    param_space, search_alg = build_param_space(spec, seed_offset=extras.get("seed_offset", 0))
    seeding = extras.get("seeding")
    if seeding is not None:
        seeding.seeded = (
            search_alg.seed_with(seeding.points) if hasattr(search_alg, "seed_with") else 0
        )
        if verbosity:
            print(f"podium: {seeding.line()}", file=sys.stderr)
    s = spec.search
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            num_samples=extras.get("more") or s.num_samples,
            search_alg=search_alg,
            scheduler=build_scheduler(spec),
            # Random draws carry their own bound (Tune ignores this one for them, with a warning).
            max_concurrent_trials=s.max_concurrent if hasattr(search_alg, "seed_with") else None,
            # One process per slot, not per trial: start-up dominates short trials.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=storage.split(ray_path)[0],
            name=storage.split(ray_path)[1],
            callbacks=relay.callbacks,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(spec)),
            failure_config=tune.FailureConfig(max_failures=spec.cluster.max_failures),
            stop=stopper,
        ),
    )
    with relay:
        grid = tuner.fit()
    return _finished_trials(grid, ledger)  # after the relay, as above


def _finished_trials(grid: Any, ledger: TrialLedger) -> dict[str, FinishedTrial]:
    """The trials Tune let go of during the sweep (the ledger) and those it still held; the
    latter are added to the ledger, which then holds the whole sweep (what ``--more`` reads)."""
    finished = ledger.entries()
    for result in grid:
        trial = _from_result(result)
        if (
            not trial.last
            and trial.error is None
            and (trial.trial_id in finished or not trial.config)
        ):
            continue  # never started (the sweep ended first), or the ledger knows more
        if finished.get(trial.trial_id) != trial:
            ledger.append(trial)
        finished[trial.trial_id] = trial
    return finished


def _from_result(result: Any) -> FinishedTrial:
    error = None
    if result.error is not None:
        error = (str(result.error).splitlines() or [repr(result.error)])[-1]
    return FinishedTrial(
        _result_trial_id(result),
        last_result(result.metrics),
        dict(result.config or {}),
        checkpoint_location(result.checkpoint),
        error,
    )


def _settle_ended_trials(finished: dict[str, FinishedTrial], logger: Any) -> None:
    """Complete the runs of trials that ended before the driver was killed but whose last
    epochs and end had not reached MLflow (Tune restores them as ended and reports nothing)."""
    from workers.trainable import checkpoint_history

    for trial in finished.values():
        if not logger.needs_settling(trial.trial_id):
            continue  # the common case, decided without reading the checkpoint
        with storage.local_copy(trial.checkpoint) if trial.checkpoint else nullcontext() as at:
            history = checkpoint_history(at)
        logger.settle(trial.trial_id, trial.last, trial.error, history)


def make_trainable(
    template: dict[str, Any], spec: ExperimentSpec, extras: dict[str, Any] | None = None
) -> Any:
    """The function Tune runs per trial: resolve the sampled config, then run the worker recipe.

    ``extras`` are driver-prepared inputs (registry teachers' local copies) for the trial context.
    """
    from orchestrator.pbt import tracked_hparams

    threads = max(1, int(spec.resources.cpu))
    extras = dict(extras or {})
    if spec.search.scheduler == "pbt":
        extras["tracked_hparams"] = tracked_hparams(template)
    extras["plugins"] = own_plugins(spec)  # what a registry teacher's metadata may name

    metric = spec.search.metric

    def podium_trial(config: dict[str, Any]) -> None:
        from orchestrator.fail_fast import is_transient
        from tracking.faults import storage_fault
        from workers.trainable import TrialContext, run_trial

        try:
            run_trial(resolve(template, config), TrialContext(threads=threads, extras=dict(extras)))
        except Exception as e:
            fault = storage_fault(e)
            if fault is not None:
                _report_storage_fault(fault, metric)  # the driver ends the sweep on it
            elif is_transient(e):
                raise  # Tune retries it from the last checkpoint
            else:
                _report_code_error(e, metric)

    return podium_trial


def _report_code_error(error: Exception, metric: str) -> None:
    """End the trial failed with an error of its own code, instead of raising it: a retry would
    raise it again (:mod:`orchestrator.fail_fast`)."""
    import traceback

    from ray import tune

    tune.report(
        {
            metric: float("nan"),  # Tune checks every result for the search metric
            keys.FAILED: f"{type(error).__name__}: {error}",
            keys.ERROR_KIND: "code",
            keys.TRACEBACK: "".join(traceback.format_exception(error))[-5000:],
        }
    )


def _report_storage_fault(fault: Any, metric: str) -> None:
    """Tell the driver the trial cannot write (a full disk, a read-only folder): every trial
    and every retry would fail the same way until space is freed, so the driver ends the sweep
    at this report, leaving the trial unfinished for ``--resume``
    (:mod:`orchestrator.fail_fast`)."""
    from ray import tune

    tune.report(
        {
            metric: float("nan"),  # Tune checks every result for the search metric
            keys.FAILED: f"{fault.cause}: {fault.detail}",
            keys.ERROR_KIND: "storage",
            keys.STORAGE_FAULT: fault.as_text(),
        }
    )


def _resources(
    spec: ExperimentSpec, template: dict[str, Any] | None = None, verbosity: int = 0
) -> dict[str, float]:
    """What each trial asks Ray for; ``gpu: auto`` becomes a share measured now (Ray running)."""
    r = spec.resources
    gpu = _auto_gpu(spec, template or template_of(spec), verbosity) if r.gpu == AUTO_GPU else r.gpu
    out: dict[str, float] = {"cpu": r.cpu, "gpu": float(gpu)}
    if r.tpu:
        out["TPU"] = r.tpu
    if r.memory_mb:
        out["memory"] = r.memory_mb * 1024 * 1024
    return out


AUTO_PROBES = 8  # configs resources.gpu: auto measures (the space's first choice/grid combinations)
PROBE_GPU = 0.01  # what a probe asks of a GPU: any GPU node's card will do
PROBE_TIMEOUT_S = 300.0


def _auto_gpu(spec: ExperimentSpec, template: dict[str, Any], verbosity: int) -> float:
    """The share of a GPU per trial for ``resources.gpu: auto``: a few configs of the space are
    trained for two steps on a GPU node, where the card is (:func:`measure_trial_memory`), and
    :func:`auto_gpu_share` decides from their peaks.

    Raises:
        RunError: the cluster has no GPU, or the probes did not finish in time.
    """
    import ray

    from workers.trainable import measure_trial_memory

    if not ray.cluster_resources().get("GPU"):
        raise RunError(
            "resources.gpu: auto needs a GPU node, and this Ray cluster has none; "
            "set resources.gpu to a number (0: CPU only)"
        )
    probe = ray.remote(measure_trial_memory).options(
        num_gpus=PROBE_GPU, num_cpus=spec.resources.cpu
    )
    refs = [probe.remote(trial) for trial in probe_trials(template)]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    if pending:
        raise RunError(
            f"resources.gpu: auto: {len(pending)} of {len(refs)} memory probes did not finish "
            f"in {PROBE_TIMEOUT_S:g} s (is a GPU free?); set resources.gpu to a number"
        )
    share, reason = auto_gpu_share(ray.get(done))
    if verbosity:
        print(f"resources.gpu: auto -> {share:g} GPU per trial: {reason}", flush=True)
    return share


def probe_trials(template: dict[str, Any], limit: int = AUTO_PROBES) -> list[dict[str, Any]]:
    """Concrete trials that bound a space's memory: each choice/grid combination (the first
    ``limit``), every continuous or integer range at its upper bound (widths, batch sizes).

    Example:
        >>> t = {"model": {"hidden": {"choice": [[8], [64]]}}, "training": {"batch_size":
        ...      {"randint": [16, 256]}}}
        >>> [(p["model"]["hidden"], p["training"]["batch_size"]) for p in probe_trials(t)]
        [([8], 256), ([64], 256)]
    """
    from orchestrator.space import grid_variants, iter_leaves
    from orchestrator.spec import space_kind

    upper = {
        key: space[space_kind(space)][1]
        for key, space in iter_leaves(template, "")
        if space_kind(space) in ("uniform", "loguniform", "randint")
    }
    variants = grid_variants(template, "", grid_choices=True)[:limit]
    return [resolve(template, {**upper, **variant}) for variant in variants]


def auto_gpu_share(memories: list[Any], margin: float | None = None) -> tuple[float, str]:
    """The share of a GPU for the largest of the probed trials (``TrialMemory`` each).

    Where no probe ran on a real GPU (a node whose torch has no CUDA), the card's size is not
    known: one trial per GPU, as a spec's ``gpu: 1`` would ask, and the reason says so.
    """
    from workers.device import DEFAULT_MARGIN, gpu_share

    largest = max(memories, key=lambda m: m.peak_bytes)
    cards = [m.card_bytes for m in memories if m.card_bytes]
    if not cards:
        return 1.0, (
            f"peak {largest.peak_bytes / 1024**3:.2f} GiB per trial {largest.how}, but no GPU "
            "could be measured (no CUDA where the probe ran), so one trial per GPU"
        )
    share, reason = gpu_share(largest.peak_bytes, min(cards), margin or DEFAULT_MARGIN)
    return share, f"{reason} ({largest.how})"


def _rows(
    finished: dict[str, FinishedTrial], template: dict[str, Any], writer: RunWriter
) -> list[TrialRow]:
    """One row per ended trial, in the order Tune created them (trial ids count up)."""
    rows = []
    for trial_id in sorted(finished):
        trial = finished[trial_id]
        error = str(trial.last.get(keys.FAILED) or "") or trial.error
        rows.append(
            TrialRow(
                trial_id,
                writer.run_id(trial_id),
                trial.status,
                result_metrics(trial.last),
                flatten_params(resolve(template, trial.config)) if trial.config else {},
                error or None,
            )
        )
    return rows


def _result_trial_id(result: Any) -> str:
    return (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)


def _trial_id_from_path(path: str) -> str:
    # Tune names trial folders <trainable>_<trial_id>_<index>_<params>...
    parts = Path(path).name.split("_")
    return "_".join(parts[2:4]) if len(parts) > 3 else Path(path).name


def selection_policy(spec: ExperimentSpec, policy: Policy, candidates: list[Candidate]) -> Policy:
    """How the sweep chooses its winner: on validation (:func:`tracking.selection.within_sweep`)
    unless the spec's ``promotion.selection_split`` is ``test``."""
    if spec.promotion.selection_split == "test":
        return policy
    return within_sweep(policy, candidates)


def _publish(
    store: Store,
    parent_id: str,
    rows: list[TrialRow],
    candidates: list[Candidate],
    policy: Any,
    decision: Decision,
    promotion: Promotion | None,
    metric: str,
) -> None:
    """The parent run's reports: leaderboard CSV, Pareto-front and learning-curve plots (of
    ``metric``, the sweep's search metric).

    The champion marked in the plots is whoever holds the alias now (the winner only if it
    beat the previous champion).
    """
    from tracking.report import publish_reports

    champion = None
    if promotion is not None and decision.winner is not None:
        champion = decision.winner.trial_id if promotion.promoted else None
    try:
        publish_reports(store.client, parent_id, candidates, policy, champion, metric)
    except Exception as e:  # noqa: BLE001 - plots are a convenience; the sweep's results stand
        log.warning("could not publish the sweep's plots (%s); logging the plain leaderboard", e)
        store.log_artifact_text(parent_id, leaderboard_csv(rows), keys.LEADERBOARD_ARTIFACT)


def leaderboard_csv(rows: list[TrialRow]) -> str:
    metric_keys = sorted({k for r in rows for k in r.metrics})
    param_keys = sorted({k for r in rows for k in r.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial_id", "run_id", "status", *metric_keys, *param_keys, "error"])
    for r in rows:
        w.writerow(
            [
                r.trial_id,
                r.run_id,
                r.status,
                *(r.metrics.get(k, "") for k in metric_keys),
                *(r.params.get(k, "") for k in param_keys),
                r.error or "",
            ]
        )
    return buf.getvalue()


__all__ = [
    "SweepResult",
    "TrialRow",
    "run_experiment",
    "promote_trial",
    "leaderboard_csv",
    "trial_error_text",
]
