"""``Tuner.fit`` for one sweep: the Tuner built from the spec (or restored for ``--resume``) with
Podium's callbacks, scheduler, searcher and memory keepers, and every trial that ended collected
from the result grid and the sweep's ledger."""

from __future__ import annotations

import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from orchestrator.execution.ledger import (
    FinishedTrial,
    TrialLedger,
    checkpoint_location,
    last_result,
    open_ledger,
)
from orchestrator.execution.resources import trial_resources
from orchestrator.execution.trial_function import make_trainable
from orchestrator.search.schedulers import (
    build_param_space,
    build_scheduler,
    checkpoints_to_keep,
    has_grid,
)
from orchestrator.spec import ExperimentSpec
from tracking.writer import RunWriter
from workers import storage

# Tune's own per-trial CSV/JSON/TensorBoard loggers duplicate what MLflow records and cost time on
# every report; its checkpoint-sync warning fires on every short sweep.
QUIET_TUNE = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
}


def earlier_trials(paths: list[str]) -> dict[str, FinishedTrial]:
    """The trials of a sweep's earlier runs (before ``--more``), from their ledgers."""
    out: dict[str, FinishedTrial] = {}
    for path in paths:
        out.update(open_ledger(path).entries())
    return out


def fit_sweep(
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
    :class:`orchestrator.execution.fail_fast.FailFast`) ends a new sweep whose trials all fail
    alike."""
    import ray
    from ray import tune

    from orchestrator.execution._ray.memory import ForgetFinishedTrials, SilentTrialProgress
    from orchestrator.execution._ray.state import SnapshotTuneState
    from orchestrator.execution.callbacks import (
        CallbackRelay,
        FirstResult,
        MlflowTrialLogger,
        ProgressView,
    )

    resources = trial_resources(spec, template, verbosity)
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
        with_tune=[
            forget,
            SnapshotTuneState(ray_path),
            *([] if keep_finished else [SilentTrialProgress()]),
        ],
    )
    if resume:
        path, fs = storage.for_tune(ray_path)
        tuner = tune.Tuner.restore(
            path,
            trainable=trainable,
            resume_errored=True,
            param_space=None,
            storage_filesystem=fs,
        )
        relay.install(tuner)
        with relay:
            grid = tuner.fit()
        # After the relay's last progress line: the ledger then completes, and the view (which
        # counts kept trials and the ledger's) would count the kept ones twice.
        finished = _finished_trials(grid, ledger)
        settle_ended_trials(finished, logger)
        return finished
    param_space, search_alg = build_param_space(spec, seed_offset=extras.get("seed_offset", 0))
    seeding = extras.get("seeding")
    if seeding is not None:
        if hasattr(search_alg, "seed_with"):
            seeding.seeded = search_alg.seed_with(seeding.points)
            search_alg.run_first(seeding.rerun)
        if verbosity:
            print(f"podium: {seeding.line()}", file=sys.stderr)
    s = spec.search
    storage_path, storage_fs = storage.for_tune(storage.split(ray_path)[0])
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
            storage_path=storage_path,
            storage_filesystem=storage_fs,
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


def settle_ended_trials(finished: dict[str, FinishedTrial], logger: Any) -> None:
    """Complete the runs of trials that ended before the driver was killed but whose last
    epochs and end had not reached MLflow (Tune restores them as ended and reports nothing)."""
    from workers.trial.checkpoint import checkpoint_history

    for trial in finished.values():
        if not logger.needs_settling(trial.trial_id):
            continue  # the common case, decided without reading the checkpoint
        with storage.local_copy(trial.checkpoint) if trial.checkpoint else nullcontext() as at:
            history = checkpoint_history(at)
        logger.settle(trial.trial_id, trial.last, trial.error, history)


def _result_trial_id(result: Any) -> str:
    return (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)


def _trial_id_from_path(path: str) -> str:
    # Tune names trial folders <trainable>_<trial_id>_<index>_<params>...
    parts = Path(path).name.split("_")
    return "_".join(parts[2:4]) if len(parts) > 3 else Path(path).name
