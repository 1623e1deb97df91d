"""The snapshot of Tune's saved state (orchestrator/execution/_ray/state.py), on a folder; the kill
it guards against is provoked for real in tests/integration/test_faults.py."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from orchestrator.execution._ray import state as tune_state
from orchestrator.execution._ray.state import (
    SNAPSHOT,
    SnapshotTuneState,
    restore_snapshot,
    write_snapshot,
)
from tests.orchestrator.test_tune_memory import _sweep

SESSION = "2026-12-07_04-07-19"


def staged(folder, **files: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_a_snapshot_puts_back_one_saves_files_over_a_cut_off_copy(tmp_path):
    state, searcher = f"experiment_state-{SESSION}.json", f"basic-variant-state-{SESSION}.json"
    staging = staged(
        tmp_path / "staging",
        **{
            state: b'{"trial_data": [1, 2, 3]}',
            searcher: b"\x80\x05 pickled",
            f"tmp-{searcher}": b"half",  # Tune's own write-then-rename, caught midway
            f"callback-states-{SESSION}.pkl": b"old",  # written after the hook: not this save's
            "experiment_state-2026-12-06_10-00-00.json": b"{}",  # an earlier driver's
            "tuner.pkl": b"once",
        },
    )
    experiment = tmp_path / "storage" / "sweep"
    write_snapshot(str(experiment), str(staging), SESSION)
    with zipfile.ZipFile(experiment / SNAPSHOT) as z:
        assert sorted(z.namelist()) == sorted([state, searcher])

    staged(experiment, **{state: b"", searcher: b"\x80\x05 newer"})  # what a kill left
    assert restore_snapshot(str(experiment)) == sorted([state, searcher])
    assert (experiment / state).read_bytes() == b'{"trial_data": [1, 2, 3]}'
    assert (experiment / searcher).read_bytes() == b"\x80\x05 pickled"


def test_without_a_snapshot_nothing_is_written(tmp_path):
    staged(tmp_path, **{f"experiment_state-{SESSION}.json": b"{}"})
    assert restore_snapshot(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"experiment_state-{SESSION}.json"]


def zipped(**files: bytes) -> bytes:
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return body.getvalue()


@pytest.mark.parametrize("name", ["../outside.json", "/etc/x.json", "a/b.json", ".."])
def test_a_snapshot_naming_a_file_outside_its_folder_is_refused_whole(tmp_path, name):
    experiment = tmp_path / "sweep"
    staged(experiment, **{SNAPSHOT: zipped(**{"experiment_state-x.json": b"{}", name: b"x"})})
    with pytest.raises(ValueError, match="outside its folder"):
        restore_snapshot(str(experiment))
    assert not (experiment / "experiment_state-x.json").exists()  # nothing written
    assert not (tmp_path / "outside.json").exists()


def test_a_snapshot_that_is_not_podiums_is_refused(tmp_path):
    (tmp_path / SNAPSHOT).write_text('{"files": {}}')
    with pytest.raises(ValueError, match="zip"):
        restore_snapshot(str(tmp_path))


# ------------------------------------------------------------------------------ a real Tune sweep


class _CountedSaves(SnapshotTuneState):
    saves = 0

    def get_state(self) -> None:
        self.saves += 1
        return super().get_state()


def test_each_copy_of_tunes_state_writes_the_snapshot_of_its_save_first(local_ray, tmp_path):
    experiment = tmp_path / "exp"
    snap = _CountedSaves(str(experiment))
    _sweep(tmp_path, [snap])
    assert snap._hooked  # written on Tune's copy thread, not in its loop
    # Saves come at Tune's period (10 s at first), not forced each time a trial has made
    # num_to_keep checkpoints: with deletions held back, the saved state needs no such help.
    # Forced, this sweep of 12 trials of 3 checkpoints each saved 14 times.
    assert snap.saves <= 4, snap.saves
    # Tune's deletions of superseded checkpoints were held back, then all carried out: each
    # trial keeps its newest two of three, and deletions are Tune's own again.
    kept = [sorted(c.name for c in t.glob("checkpoint_*")) for t in experiment.glob("_train_*")]
    assert kept and all(k == ["checkpoint_000001", "checkpoint_000002"] for k in kept), kept
    assert tune_state._holding is None and not snap._deletions
    with zipfile.ZipFile(experiment / SNAPSHOT) as z:
        names = z.namelist()
        state = next(n for n in names if n.startswith("experiment_state-"))
        # The last save, which Tune copied whole at the end: the snapshot is the same save.
        assert z.read(state) == (experiment / state).read_bytes()
        assert any(n.startswith("basic-variant-state-") for n in names)


def test_a_held_back_deletion_happens_after_the_snapshot_and_tunes_copy(tmp_path):
    import pyarrow.fs as pafs
    from ray.train._internal.storage import _delete_fs_path

    old = tmp_path / "trial" / "checkpoint_000000"
    old.mkdir(parents=True)
    location = str(tmp_path / SNAPSHOT)
    seen = []

    def copy() -> None:  # what Tune's copy sees: the snapshot written, the checkpoint not gone
        seen.append((Path(location).exists(), old.exists()))

    tune_state._tune_delete = _delete_fs_path
    command = tune_state._WriteThen(location, b"zip", [(pafs.LocalFileSystem(), str(old))], copy)
    command()
    assert seen == [(True, True)] and not old.exists()


def test_a_copy_command_pickles_without_the_snapshot_or_the_deletions(tmp_path, monkeypatch):
    """Tune pickles its syncer, current command included, with every trial's storage: a
    command that carried the snapshot put each save inside the next (issue 31)."""
    import pickle

    deleted: list = []
    monkeypatch.setattr(tune_state, "_delete", deleted.extend)
    location = tmp_path / SNAPSHOT
    body = b"x" * 1_000_000
    command = tune_state._WriteThen(str(location), body, [("fs", "/a/checkpoint")], print)
    assert len(pickle.dumps(command)) < 1_000
    again = pickle.loads(pickle.dumps(command))
    again()  # a pickled command is Tune's copy alone: no snapshot, no deletions
    assert not location.exists() and not deleted
    command()  # the live one writes the snapshot once, then lets go of it
    assert location.read_bytes() == body and command._body is None
    assert deleted == [("fs", "/a/checkpoint")]


def test_held_back_checkpoints_on_s3_are_deleted_together_without_tunes_probe(
    s3_server, monkeypatch
):
    """Tune deletes a checkpoint with several requests on S3 (is it a folder? a listing, a
    batch delete, pyarrow's parent marker); held back, a save's checkpoints go together, whichever
    trial's copy of the file system names them: one listing per trial and one delete."""
    import pickle

    from ray.train._internal.storage import _delete_fs_path

    from workers import storage

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3_server.bucket()
    path, fs = storage.for_tune(f"s3://{bucket}/runs")
    log = s3_server.home / "moto.log"
    monkeypatch.setattr(tune_state, "_tune_delete", _delete_fs_path)

    def requests(delete) -> int:
        before = log.read_text(errors="replace").count(f"/{bucket}")
        delete()
        return log.read_text(errors="replace").count(f"/{bucket}") - before

    folders = [f"{path}/trial/checkpoint_00000{i}" for i in range(4)]
    for folder in folders:
        for name in ("state.pt", "manifest.json"):
            with fs.open_output_stream(f"{folder}/{name}") as f:
                f.write(b"x")
    assert requests(lambda: _delete_fs_path(fs, folders[0])) >= 4  # 7 with pyarrow 25
    other = pickle.loads(pickle.dumps(fs))  # as another trial's storage names it
    assert requests(lambda: tune_state._delete([(fs, folders[1]), (other, folders[2])])) == 2
    tune_state._delete([(fs, f"{path}/trial/checkpoint_000009")])  # never written: no error
    left = [k for k in s3_server.objects(bucket) if not k.endswith("/")]
    assert sorted(left) == [
        f"runs/trial/checkpoint_000003/{n}" for n in ("manifest.json", "state.pt")
    ]
