"""The storage layer on a folder and on a real S3 server (moto's, on loopback), and the check
that finds a checkpoint whose upload was cut off."""

from __future__ import annotations

import json

import pytest

from workers import storage
from workers.trial.checkpoint import MANIFEST_KEY, STATE_FILE, checkpoint_problem


@pytest.fixture
def bucket(s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server.bucket()


def _roundtrip(base: str) -> None:
    target = storage.join(base, "exp", "a.json")
    assert not storage.exists(target) and storage.size(target) is None
    storage.write_text(target, '{"x": 1}')
    storage.write_text(storage.join(base, "exp", "b.json"), "")
    assert storage.exists(target) and storage.read_text(target) == '{"x": 1}'
    assert storage.names(storage.join(base, "exp")) == ["a.json", "b.json"]
    assert storage.size(storage.join(base, "exp", "b.json")) == 0
    assert storage.names(storage.join(base, "nothing")) == []


def test_a_folder_and_a_bucket_read_and_write_alike(tmp_path, bucket):
    _roundtrip(str(tmp_path))
    _roundtrip(f"s3://{bucket}/prefix")
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # renamed into place


def test_a_folder_uploads_and_comes_back_whole(tmp_path, bucket, s3_server):
    src = tmp_path / "src"
    (src / "artifacts").mkdir(parents=True)
    (src / "state.pt").write_bytes(b"\0" * 1000)
    (src / "artifacts" / "model.onnx").write_bytes(b"onnx")
    location = f"s3://{bucket}/runs/trial/checkpoint_000001"
    storage.upload(src, location)
    files = {k: n for k, n in s3_server.objects(bucket).items() if not k.endswith("/")}
    assert files == {
        "runs/trial/checkpoint_000001/state.pt": 1000,
        "runs/trial/checkpoint_000001/artifacts/model.onnx": 4,
    }
    with storage.local_copy(location) as folder:
        kept = folder
        assert (folder / "artifacts" / "model.onnx").read_bytes() == b"onnx"
    assert not kept.exists()  # the temporary copy goes
    with pytest.raises(FileNotFoundError, match="nothing at"):
        storage.download(f"s3://{bucket}/runs/missing", tmp_path / "dst")


def test_locations_split_and_print_back_as_written(bucket):
    assert storage.split("s3://b/runs/exp-1") == ("s3://b/runs", "exp-1")
    assert storage.split("/srv/runs/exp-1") == ("/srv/runs", "exp-1")
    assert storage.normalise("gs://b/runs/") == "gs://b/runs"
    checkpoint = f"s3://{bucket}/runs/exp-1/checkpoint_000000"
    assert storage.location_of(*storage.filesystem(checkpoint)) == checkpoint
    local, where = storage.filesystem("/srv/runs")
    assert storage.location_of(local, where) == "/srv/runs"


def test_a_checkpoint_cut_off_is_found_and_a_whole_one_passes(tmp_path):
    import torch

    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "model.onnx").write_bytes(b"\2" * 32)
    manifest = {"files": {"artifacts/model.onnx": 32}, "history": {}}
    torch.save({"w": torch.ones(256), MANIFEST_KEY: json.dumps(manifest)}, tmp_path / STATE_FILE)
    assert checkpoint_problem(tmp_path) is None

    (tmp_path / "artifacts" / "model.onnx").write_bytes(b"\2" * 10)
    assert checkpoint_problem(tmp_path) == "has artifacts/model.onnx cut short: 10 of 32 bytes"
    (tmp_path / "artifacts" / "model.onnx").write_bytes(b"\2" * 32)
    whole = (tmp_path / STATE_FILE).read_bytes()
    for cut in (len(whole) - 1, len(whole) // 2, 0):  # a copy cut short anywhere
        (tmp_path / STATE_FILE).write_bytes(whole[:cut])
        assert (checkpoint_problem(tmp_path) or "").startswith("is not whole"), cut
    (tmp_path / STATE_FILE).unlink()
    assert checkpoint_problem(tmp_path) == "lacks state.pt (its upload was cut off)"


def test_tune_uploads_a_checkpoint_as_one_put_per_file_and_no_folder_markers(
    tmp_path, bucket, s3_server
):
    """Through the file system Podium gives Tune, Tune's own checkpoint upload makes one request
    per (small) file: no multipart upload, no empty "folder/" marker objects."""
    from ray.train._internal.storage import _upload_to_fs_path

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for name in ("state.pt", "artifacts.onnx", "notes.txt", "extra.bin", "manifest.json"):
        (checkpoint / name).write_bytes(b"x" * 2000)
    path, fs = storage.for_tune(f"s3://{bucket}/runs")
    log = s3_server.home / "moto.log"
    before = log.read_text(errors="replace").count(f"/{bucket}")
    _upload_to_fs_path(str(checkpoint), fs, f"{path}/exp/trial/checkpoint_000000")
    requests = log.read_text(errors="replace").count(f"/{bucket}") - before
    keys = s3_server.objects(bucket)
    assert sorted(keys) == sorted(
        f"runs/exp/trial/checkpoint_000000/{n.name}" for n in checkpoint.iterdir()
    )  # nothing ending in "/"
    assert requests == 5, requests
    # Read back through the same file system, as Tune's restore and Podium's promotion do.
    with storage.local_copy(f"s3://{bucket}/runs/exp/trial/checkpoint_000000") as copy:
        assert (copy / "state.pt").read_bytes() == b"x" * 2000


def test_the_object_store_file_system_unpickles_to_one_shared_client(bucket):
    """Tune pickles the file system into every result with a checkpoint: unpickling must not
    build a new S3 client each time."""
    import pickle

    fs, _ = storage.filesystem(f"s3://{bucket}/runs")
    first, second = (pickle.loads(pickle.dumps(fs)) for _ in range(2))
    assert first.handler is second.handler
    assert first.equals(fs) and storage.location_of(first, "b/x") == "s3://b/x"
    assert storage.for_tune("/srv/runs") == ("/srv/runs", None)  # a folder: Tune's own


def test_tunes_storage_marker_is_asked_for_once_per_process(tmp_path, bucket, s3_server):
    """Tune checks its marker before every checkpoint upload; once seen, it is not asked again.
    Other files are asked every time: they come and go."""
    from ray.train._internal.storage import _exists_at_fs_path

    path, fs = storage.for_tune(f"s3://{bucket}/runs")
    marker, other = f"{path}/exp/{storage.TUNE_MARKER}", f"{path}/exp/other.json"
    log = s3_server.home / "moto.log"

    def requests(check) -> int:
        before = log.read_text(errors="replace").count(f"/{bucket}")
        check()
        return log.read_text(errors="replace").count(f"/{bucket}") - before

    assert requests(lambda: _exists_at_fs_path(fs, marker)) >= 1  # not there yet: asked ...
    assert requests(lambda: _exists_at_fs_path(fs, marker)) >= 1  # ... every time
    with fs.open_output_stream(marker):
        pass
    with fs.open_output_stream(other):
        pass
    assert requests(lambda: _exists_at_fs_path(fs, marker)) >= 1
    assert requests(lambda: [_exists_at_fs_path(fs, marker) for _ in range(5)]) == 0
    assert requests(lambda: _exists_at_fs_path(fs, other)) >= 1
    fs.delete_file(other)
    assert not _exists_at_fs_path(fs, other)


def test_folders_on_s3_are_deleted_together_with_what_is_in_them(bucket, s3_server, tmp_path):
    """Tune's superseded checkpoints of two trials: two listings and one batch delete, where
    pyarrow makes three requests a folder; a folder whose name merely starts with a deleted
    one's, and every other folder, stay; no "folder/" markers appear; missing folders pass."""
    path, fs = storage.for_tune(f"s3://{bucket}/runs")
    kept = ["t1/checkpoint_10/state.pt", "t1/checkpoint_2/state.pt", "t2/checkpoint_3/m.json"]
    doomed = ["t1/checkpoint_1/state.pt", "t1/checkpoint_1/manifest.json"]
    doomed += ["t2/checkpoint_1/state.pt", "t2/checkpoint_2/state.pt"]
    for key in kept + doomed:
        with fs.open_output_stream(f"{path}/exp/{key}") as f:
            f.write(b"x")
    gone = ["t1/checkpoint_1", "t2/checkpoint_1", "t2/checkpoint_2", "t2/checkpoint_9"]
    log = s3_server.home / "moto.log"
    before = log.read_text(errors="replace").count(f"/{bucket}")
    assert storage.deletes_in_batches(fs)
    storage.delete_folders(fs, [f"{path}/exp/{g}" for g in gone])
    assert log.read_text(errors="replace").count(f"/{bucket}") - before == 3
    assert sorted(s3_server.objects(bucket)) == sorted(f"runs/exp/{k}" for k in kept)
    # A folder on disk: one at a time, as pyarrow deletes it.
    import pyarrow.fs as pafs

    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "state.pt").write_bytes(b"x")
    local = pafs.LocalFileSystem()
    assert not storage.deletes_in_batches(local)
    storage.delete_folders(local, [str(tmp_path / "c1"), str(tmp_path / "none")])
    assert not (tmp_path / "c1").exists()


def test_a_bucket_file_system_is_built_once_per_server_and_keys(bucket, monkeypatch):
    """Each ledger record, snapshot and read used to build an S3 client (13 ms here); the file
    system is now one per bucket, until the variables naming the server or keys change."""
    first, path = storage.filesystem(f"s3://{bucket}/runs/a.json")
    again, _ = storage.filesystem(f"s3://{bucket}/other/")
    assert again is first and path == f"{bucket}/runs/a.json"
    for uri in (f"s3://{bucket}/other/", f"s3://{bucket}", f"s3://{bucket}/a/b.json"):
        assert storage.filesystem(uri)[1] == storage._new_filesystem(uri)[1]  # pyarrow's path
    storage.write_text(f"s3://{bucket}/runs/a.json", "{}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    assert storage.filesystem(f"s3://{bucket}/runs/a.json")[0] is not first
