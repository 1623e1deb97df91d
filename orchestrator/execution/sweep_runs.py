"""The sweep's runs in MLflow, set up in the driver before any trial starts.

A new sweep gets a parent run and a Tune folder of its own; ``--resume`` reopens the newest
sweep's parent and child runs (after checking Tune's saved state survived), ``--more`` reopens a
finished one with a new Tune folder for the added trials. A sweep ended by a storage fault leaves
its runs FAILED with the reason, and ``--resume`` takes them up again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from orchestrator.errors import RunError, SpecError, StorageFailure
from orchestrator.search.space import template_of
from orchestrator.spec import ExperimentSpec
from tracking import keys
from tracking.faults import StorageFault, remedy
from tracking.store import Store, TrackingError
from workers import storage

log = logging.getLogger(__name__)


@dataclass
class _Sweep:
    """The tracking side of a sweep, set up in the driver before any trial starts."""

    store: Store
    experiment_id: str
    parent_id: str
    ray_path: str  # where Tune keeps this run of the sweep's trials
    existing: dict[str, Any]  # child runs by trial id (resume, --more)
    earlier: list[str] = field(default_factory=list)  # Tune folders of the sweep's earlier runs
    seeding: Any = None  # orchestrator.search.warm_start.Seeding: earlier trials for the searcher


def prepare_tracking(
    spec: ExperimentSpec, uri: str, resume: bool, workdir: str | os.PathLike, more: int = 0
) -> _Sweep:
    """The store, experiment and parent run, created in the driver before any trial starts.

    Raises:
        RunError: MLflow could not be reached, or there is nothing to resume or extend.
        SpecError: ``search.warm_start`` names an experiment the store lacks.
    """
    from orchestrator.search import warm_start

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
        from orchestrator.execution._ray.state import restore_snapshot

        try:
            restore_snapshot(path)  # the state Tune last saved, whole, over its own copy of it
        except ValueError as e:
            raise RunError(
                f"cannot resume {spec.name!r}: Podium's copy of Tune's state: {e}"
            ) from e
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
    """Runs a storage fault ended FAILED (:func:`failed_on`) are unfinished, not failed:
    open again, without the fault's status and error, for the resumed sweep to end. True if
    there were any."""
    faulted = [r for r in runs if keys.TAG_FAULT in r.data.tags]
    for run in faulted:
        for key in (keys.TAG_FAULT, keys.TAG_STATUS, keys.TAG_ERROR):
            if key in run.data.tags:
                store.client.delete_tag(run.info.run_id, key)
        store.client.update_run(run.info.run_id, status="RUNNING")
    return bool(faulted)


def discard_parent(prepared: Any) -> None:
    """Delete the parent run a sweep that never started created (it would stay RUNNING)."""
    try:
        sweep = prepared.result()
    except (RunError, SpecError):
        return  # tracking failed too; nothing was created
    sweep.store.client.delete_run(sweep.parent_id)


def failed_on(
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
