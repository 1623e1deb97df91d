"""Runs a sweep: MLflow set-up in the driver, Ray Tune fan-out, selection, registry promotion.

The lifecycle, in order: resolve the tracking URI → create the experiment and the parent run
(before any trial, so trials never race the store's first use) → start or join Ray → Tuner.fit
(trials report per epoch; the driver-side callback logs to MLflow through a buffered writer) →
flush the writer → select the best trial (pure) → log and register its model → finish the parent.

What the lifecycle calls on lives beside it, one concern a module: the sweep's MLflow runs
(:mod:`orchestrator.execution.sweep_runs`), registry teachers
(:mod:`orchestrator.registry.teachers`), what a trial asks Ray for
(:mod:`orchestrator.execution.resources`), the function Tune runs per trial
(:mod:`orchestrator.execution.trial_function`), the leaderboard and reports
(:mod:`orchestrator.registry.leaderboard`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import Problem, RunError, SpecError
from orchestrator.execution.fit import QUIET_TUNE, earlier_trials, fit_sweep
from orchestrator.execution.ledger import (
    FinishedTrial,
)
from orchestrator.execution.ray_session import (
    check_address,
    collector_paused,
    init_ray,
    shutdown_ray,
)
from orchestrator.execution.sweep_runs import discard_parent, failed_on, prepare_tracking
from orchestrator.registry.leaderboard import TrialRow, trial_rows
from orchestrator.registry.promotion import Target, conclude
from orchestrator.registry.teachers import check_registry_teachers, fetch_registry_teachers
from orchestrator.search.schedulers import (
    has_grid,
)
from orchestrator.search.space import template_of
from orchestrator.spec import ExperimentSpec
from orchestrator.spec.plugins import make_importable, runtime_env_for
from tracking import keys
from tracking.faults import StorageFault, from_text, storage_fault
from tracking.registry.model import warm_up_model_logging
from tracking.registry.promote import Promotion
from tracking.selection import Candidate, Decision, policy_from
from tracking.store import Store, resolve_tracking_uri
from tracking.writer import RunWriter

log = logging.getLogger(__name__)


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
            (:mod:`orchestrator.execution._ray.memory`), so the driver's memory stays flat; the
            ledger is written either way.

    Raises:
        RunError: Ray or MLflow failed, or there is no sweep to resume.

    Example:
        >>> from orchestrator.spec import load_spec
        >>> result = run_experiment(load_spec(overrides=["search.num_samples=2"]))  # doctest: +SKIP
        >>> result.promotion.model_uri  # doctest: +SKIP
        'models:/digits-classifier@champion'
    """
    for k, v in QUIET_TUNE.items():
        os.environ.setdefault(k, v)
    clock = _Phases()
    make_importable(spec.plugin_roots)  # a notebook may run a spec parsed from elsewhere
    uri = resolve_tracking_uri(tracking_uri, spec.tracking.uri, workdir)
    check_registry_teachers(spec, uri)
    # Downloaded and checked before Ray starts: a teacher whose metadata names code not in
    # this spec is a spec error, like one that does not resolve.
    teachers = fetch_registry_teachers(spec, uri, workdir)
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
        sweep = prepare_tracking(spec, uri, resume, workdir, more)
        started_ray = init_ray(ray_address, verbosity, runtime_env_for(spec))
    else:
        # A new SQLite store migrates its schema (seconds) while Ray starts its processes.
        with ThreadPoolExecutor(1, thread_name_prefix="podium-tracking") as pool:
            prepared = pool.submit(prepare_tracking, spec, uri, resume, workdir)
            try:
                started_ray = init_ray(ray_address, verbosity, runtime_env_for(spec))
            except RunError:
                discard_parent(prepared)
                raise
            try:
                sweep = prepared.result()
            except (RunError, SpecError):
                shutdown_ray(started_ray)
                raise
    store, experiment_id, parent_id = sweep.store, sweep.experiment_id, sweep.parent_id
    ray_path = sweep.ray_path
    clock.mark("start")  # Ray up, store and parent run ready
    from orchestrator.execution.fail_fast import FailFast, clear_faults, post_fault

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
        finished = fit_sweep(
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
        raise failed_on(
            store, experiment_id, parent_id, writer.fault, "the MLflow store", _store_path(uri)
        )
    if fault is not None:
        what = "the sweep's checkpoints"
        raise failed_on(store, experiment_id, parent_id, fault, what, ray_path)
    finished = {**earlier_trials(sweep.earlier), **finished}
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
            raise failed_on(store, experiment_id, parent_id, late, "the model", where) from e
        finally:
            stopping.join()


def fault_of(error: BaseException) -> StorageFault | None:
    """The storage fault that ended the sweep: reported by a trial or the MLflow writer (the
    stopper's :class:`StorageFaultStop`), or met by Tune's driver itself."""
    from orchestrator.execution.fail_fast import StorageFaultStop

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
    """After the sweep: the one promotion path (select, promote, publish), then end the parent."""
    rows = trial_rows(finished, template, writer)
    policy = policy_from(asdict(spec.promotion))
    candidates = [Candidate(r.trial_id, r.metrics, r.status, r.run_id, r.params) for r in rows]
    target = Target(
        spec.model_name,
        spec.promotion.alias,
        spec.promotion.selection_split,
        spec.search.metric,
        {keys.TAG_SPEC_HASH: spec.spec_hash(), keys.TAG_EXPERIMENT: spec.name},
        spec.promotion.enabled,
    )

    def checkpoint_of(trial_id: str) -> str:
        checkpoint = finished[trial_id].checkpoint
        if checkpoint is None:
            raise RunError(f"the winner {trial_id} left no checkpoint to promote")
        return checkpoint

    done = conclude(store, parent_id, candidates, policy, target, checkpoint_of, rows, clock.mark)
    store.end_run(parent_id, "FINISHED" if done.decision.winner is not None else "FAILED")
    clock.mark("publish")
    first = done.chooser.objectives[0]
    extra = {"timings_s": clock.seconds, "ranked_by": (first.metric, first.mode)}
    return SweepResult(
        spec.name, uri, parent_id, rows, done.decision, done.promotion, writer.failures, extra
    )


class _Phases:
    """Wall seconds per phase of a run, for ``--verbose`` and the overhead benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def _preload() -> None:
    import orchestrator.execution.callbacks  # noqa: F401  (Ray Tune)


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


__all__ = ["SweepResult", "run_experiment"]
