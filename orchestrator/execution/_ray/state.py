"""Tune's saved state, read back as it was saved: whole, and all of one save.

Ray Tune 2.58 saves a sweep's state as several files, the trials'
(``experiment_state-<session>.json``) and the searcher's (``basic-variant-state-<session>.json``,
``search_gen_state-<session>.json``, ...), into a staging folder on the driver, then copies that
folder to the sweep's storage file by file, in a background thread. A driver killed during the
copy leaves a mix there:

- in a folder, a file the copy had truncated and not yet written (Tune then starts the sweep
  over, losing its trials);
- anywhere, the searcher's new state beside the trials' old one: the searcher counts a trial
  as created that no trial state lists, so ``--resume`` never runs it and still succeeds. CI
  hit this: a 4-trial grid resumed with one trial left at its second of six epochs.

So at every save, once Tune has written the files into staging, :class:`SnapshotTuneState`
takes them as one zip file, :data:`SNAPSHOT`, and the copy that save launches writes it first,
then copies Tune's files: one object, which an object store shows whole or not at all (a folder
gets it by rename). ``--resume`` first writes the snapshot's files back over Tune's
(:func:`restore_snapshot`), so Tune reads a set that was saved together: that of the last save
whose copy began (a copy can also pick up files that a later save rewrote in staging meanwhile;
the snapshot sets those back too). The write happens on Tune's copy thread, not in Tune's
loop: written in the loop, it cost the anchor sweep 53 waits of 37-70 ms on S3 (see
docs/BENCHMARKS.md).

A checkpoint that the newest whole state names must still be there when a resume reads it. Tune
deletes a trial's superseded checkpoint the moment a newer one arrives, and saves the state
that no longer names it only after: a kill in between left a state naming a deleted checkpoint
(CI: the trial failed to restore). So while a sweep runs, Tune's deletions wait, and the copy
that writes the next snapshot carries them out after it (the sweep's last save carries out
the rest; a sweep that fails leaves them).

Hooks, all Ray Tune 2.58's: Tune calls each callback's ``get_state`` in the middle of a save,
after the trials' and the searcher's files and before its own (Podium's callbacks keep no Tune
state); and the experiment's checkpoint manager launches the copy through its storage's
``syncer``, which this module wraps, over a copy of it, for that manager alone: the storage
travels to every trial, pickled into each save of Tune's state with its syncer and the command
that syncer last ran, so neither the wrapper nor a command that carries a snapshot may be
reachable from it (issue 31: each save was inside the next). Tune's checkpoint manager module
deletes through its ``_delete_fs_path``, which this module routes to the running sweep's
queue. If the first two are missing, the snapshot is written in Tune's loop and deletions are
Tune's own.

Importing this module imports Ray Tune.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import posixpath
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.tune import Callback

from orchestrator.execution._ray.memory import calling_controller
from workers import storage

log = logging.getLogger(__name__)

SNAPSHOT = "podium-tune-state.zip"
# Deflate's fastest level: Tune's state is JSON and pickles of ~100 KB that shrink several-fold
# (to 12-15 KB in the anchor sweep), and the zip is made in Tune's loop, once per save.
_LEVEL = 1
# Tune's names for the parts of one save: each carries the session, a driver's start time.
_TEMPORARY_PREFIX = "tmp-"  # Tune's own write-then-rename files
_CALLBACK_STATE_PREFIX = "callback-states-"  # written after the hook; Podium's are stateless
_DELETERS = 8  # threads for a save's held-back deletions (requests that mostly wait)


class SnapshotTuneState(Callback):
    """Tune callback: at each save of Tune's state, write its files as one object into the
    experiment folder ``experiment`` (a location: a folder or a URI).

    Example:
        >>> snap = SnapshotTuneState("s3://runs/podium/sweep-1a2b3c4d")  # doctest: +SKIP
        >>> tune.Tuner(train, run_config=tune.RunConfig(callbacks=[snap]))  # doctest: +SKIP
    """

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment
        self._staging: str | None = None
        self._session: str | None = None
        self._pending: bytes | None = None
        self._hooked = False
        self._deletions: deque[tuple[Any, str]] = deque()  # Tune's, until a snapshot is written

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pending": None, "_hooked": False, "_deletions": deque()}

    @property
    def location(self) -> str:
        return storage.join(self.experiment, SNAPSHOT)

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        controller = calling_controller("_storage", "_session_str", "_checkpoint_manager")
        if controller is None:
            log.warning(
                "cannot reach Ray Tune's controller (Ray other than 2.58?): a driver killed "
                "while Tune copies its state may leave state that --resume cannot use"
            )
            return
        self._staging = controller._storage.experiment_driver_staging_path
        self._session = controller._session_str
        manager = controller._checkpoint_manager
        self._hooked = _copy_snapshot_first(manager, self)
        if self._hooked:
            _defer_deletions_to(self)
            # Tune forces a save (and waits in its loop for the copy before it) each time a
            # trial has checkpointed num_to_keep times, only so that its saved state never names
            # a checkpoint it has deleted; Ray's own comment calls it a non-performant
            # workaround. The held-back deletions keep that true, so saves come at Tune's period.
            if hasattr(manager, "_sync_every_n_trial_checkpoints"):
                manager._sync_every_n_trial_checkpoints = None

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A sweep that ended well made its last save (and that copy's deletions) before this.
        # One that failed did not: what is still held back stays, so --resume finds every
        # checkpoint its newest state names (a few superseded ones are left over).
        _defer_deletions_to(None)

    def get_state(self) -> None:
        if self._staging is not None and self._session is not None:
            body = snapshot_of(self._staging, self._session)
            if self._hooked:
                self._pending = body  # the copy this save launches writes it
            else:
                storage.write_bytes(self.location, body)
        return None  # nothing of this callback's own to save

    def take(self) -> bytes | None:
        body, self._pending = self._pending, None
        return body

    def take_deletions(self) -> list[tuple[Any, str]]:
        taken = []
        while self._deletions:
            taken.append(self._deletions.popleft())
        return taken


class _SnapshotFirst:
    """Tune's experiment syncer, except that each copy it launches first writes the snapshot
    of the save that launched it (in the copy's thread, before any of the save's files)."""

    def __init__(self, syncer: Any, snapshots: SnapshotTuneState) -> None:
        # A copy of Tune's syncer, the manager's alone. Every trial's storage context is a
        # shallow copy of the experiment's and shares its syncer, and Tune pickles a trial's
        # storage (syncer, current command and all) into each save of its state: a command
        # holding a snapshot there put every save inside the next one (issue 31: 4.4 GB).
        self._syncer = copy.copy(syncer)
        self._snapshots = snapshots

    def __getattr__(self, name: str) -> Any:
        return getattr(self._syncer, name)

    def sync_up(self, local_dir: str, remote_dir: str, exclude: list | None = None) -> bool:
        # What Ray 2.58's _BackgroundSyncer.sync_up does, with the snapshot put in front.
        if self._syncer._should_continue_existing_sync():
            return False  # Tune skips this copy; the next save's snapshot supersedes this one
        upload, kwargs = self._syncer._sync_up_command(
            local_path=local_dir, uri=remote_dir, exclude=exclude
        )
        body = self._snapshots.take()
        if body is not None:
            # Deletions Tune asked for before this save: its state names newer checkpoints.
            deletions = self._snapshots.take_deletions()
            upload = _WriteThen(self._snapshots.location, body, deletions, upload)
        self._syncer._launch_sync_process((upload, kwargs))
        return True


class _WriteThen:
    """A copy command: the snapshot, then Tune's copy, then the deletions the snapshot made safe.

    Tune's syncer keeps its current command to retry it, and pickles it with itself. The
    snapshot's bytes and the deletions are held only until done and never pickled: a pickled
    command is Tune's copy alone (a retry of a copy whose snapshot was written, too).
    """

    def __init__(
        self,
        location: str,
        body: bytes,
        deletions: list[tuple[Any, str]],
        upload: Callable[..., Any],
    ) -> None:
        self.location = location
        self._body: bytes | None = body
        self._deletions = deletions
        self._upload = upload

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_body": None, "_deletions": []}

    def __call__(self, **kwargs: Any) -> Any:
        if self._body is not None:
            storage.write_bytes(self.location, self._body)
            self._body = None
        result = self._upload(**kwargs)
        deletions, self._deletions = self._deletions, []
        _delete(deletions)
        return result


# Tune's own deletion, and the sweep whose snapshots hold Tune's deletions back (one per driver).
_tune_delete: Callable[..., Any] | None = None
_holding: SnapshotTuneState | None = None


def _defer_deletions_to(snapshots: SnapshotTuneState | None) -> None:
    """Route Tune's checkpoint deletions to ``snapshots``' queue (None: to Tune again)."""
    from ray.train._internal import checkpoint_manager

    global _tune_delete, _holding
    if checkpoint_manager._delete_fs_path is not _deferred_delete:
        _tune_delete = checkpoint_manager._delete_fs_path
        checkpoint_manager._delete_fs_path = _deferred_delete
    _holding = snapshots


def _deferred_delete(fs: Any, fs_path: str) -> None:
    holding = _holding
    if holding is None:
        _tune_delete(fs=fs, fs_path=fs_path)  # type: ignore[misc]
    else:
        holding._deletions.append((fs, fs_path))


def _delete(deletions: list[tuple[Any, str]]) -> None:
    assert _tune_delete is not None or not deletions
    # Each trial's storage has its own file system object; S3's all go to one client together.
    together: list[tuple[Any, str]] = []
    one_by_one: list[tuple[Any, str]] = []
    for d in deletions:
        (together if storage.deletes_in_batches(d[0]) else one_by_one).append(d)
    if together:
        try:
            storage.delete_folders(together[0][0], [path for _, path in together])
        except Exception as e:  # noqa: BLE001 - one at a time below, each error logged
            log.warning("deleting %d superseded checkpoints together: %s", len(together), e)
            one_by_one += together
    # A save can carry many (all of a period's superseded checkpoints, and the last save waits
    # for them): each costs a few requests on object storage, so they overlap.
    with ThreadPoolExecutor(max_workers=_DELETERS) as pool:
        list(pool.map(lambda d: _delete_checkpoint(*d), one_by_one))


def _delete_checkpoint(fs: Any, fs_path: str) -> None:
    # Tune only deletes checkpoints, which are folders: deleted as one at once, without Tune's
    # is-it-a-folder question first (one more listing each on S3).
    try:
        fs.delete_dir(fs_path)
    except FileNotFoundError:
        pass  # already gone
    except Exception:  # noqa: BLE001 - a file, or an error: Tune's own deletion logs it
        _tune_delete(fs=fs, fs_path=fs_path)  # type: ignore[misc]


def _copy_snapshot_first(manager: Any, snapshots: SnapshotTuneState) -> bool:
    """Give Tune's experiment checkpoint ``manager`` a storage whose syncer writes the snapshot
    first; False where its syncer is not the one this module knows."""
    syncer = getattr(getattr(manager, "_storage", None), "syncer", None)
    needed = ("_should_continue_existing_sync", "_sync_up_command", "_launch_sync_process")
    if syncer is None or not all(hasattr(syncer, a) for a in needed):
        return False
    own = copy.copy(manager._storage)  # the manager's alone: trials get the original
    own.syncer = _SnapshotFirst(syncer, snapshots)
    manager._storage = own
    return True


def write_snapshot(experiment: str, staging: str, session: str) -> None:
    """Write the files of ``session``'s save in ``staging`` as :data:`SNAPSHOT` in
    ``experiment``."""
    storage.write_bytes(storage.join(experiment, SNAPSHOT), snapshot_of(staging, session))


def snapshot_of(staging: str, session: str) -> bytes:
    """The files of ``session``'s save in ``staging``, as one zip file."""
    names = [
        name
        for name in sorted(os.listdir(staging))
        if session in name
        and not name.startswith((_TEMPORARY_PREFIX, _CALLBACK_STATE_PREFIX))
        and os.path.isfile(os.path.join(staging, name))
    ]
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w", zipfile.ZIP_DEFLATED, compresslevel=_LEVEL) as z:
        for name in names:
            z.write(os.path.join(staging, name), name)
    return body.getvalue()


def restore_snapshot(experiment: str) -> list[str]:
    """Write the snapshot's files over Tune's in ``experiment``; returns their names ([] if
    there is no snapshot: a sweep killed before Tune first saved, or saved by an older
    Podium).

    Raises:
        ValueError: the snapshot is not one Podium wrote (not a zip file, or a file named
            outside the folder); nothing was written.
    """
    location = storage.join(experiment, SNAPSHOT)
    if storage.size(location) is None:
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(storage.read_bytes(location))) as z:
            files = {name: z.read(name) for name in z.namelist()}
    except zipfile.BadZipFile as e:
        raise ValueError(f"{location}: {e}") from e
    for name in files:
        if posixpath.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"{location}: names a file outside its folder: {name!r}")
    for name, data in files.items():
        storage.write_bytes(storage.join(experiment, name), data)
    return sorted(files)


__all__ = [
    "SNAPSHOT",
    "SnapshotTuneState",
    "restore_snapshot",
    "snapshot_of",
    "write_snapshot",
]
