"""A full disk ends a sweep cleanly — checkpoints, the SQLite store, promotion — and
``--resume`` finishes it once space is freed. Each disk is a real, small tmpfs (CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.fixtures_services import user_env
from tests.integration.test_cli import podium
from tracking import keys

pytestmark = pytest.mark.slow
QUICK = ["--set", "search.num_samples=4", "--set", "training.max_epochs=3"]


@contextmanager
def tmpfs(disk: Path, size: str) -> Iterator[Path]:
    """A filesystem of its own at ``disk``, of ``size``."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def grow(disk: Path, size: str = "64m") -> None:
    """Give ``disk`` more room, as an operator freeing space would."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "3m") as disk:
        yield disk


@pytest.fixture
def store_disk(tmp_path) -> Iterator[Path]:
    """Room for a new SQLite store and a sweep's runs, until filled."""
    with tmpfs(tmp_path / "disk", "64m") as disk:
        yield disk


def fill(disk: Path, leave_kb: int) -> Path:
    """Fill ``disk`` but ``leave_kb``; the filler file, to delete to free space again."""
    st = os.statvfs(disk)
    free_kb = st.f_bavail * st.f_frsize // 1024
    filler = disk / "filler"
    with filler.open("ab") as f:
        try:
            f.write(b"\0" * max(0, free_kb - leave_kb) * 1024)
            f.flush()
        except OSError:
            pass  # full: that was the point
    return filler


def the_error(result: subprocess.CompletedProcess) -> str:
    """The run's last stderr line, after checking nothing else went wrong on the way."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def runs(uri: str) -> list:
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("digits-default")
    return client.search_runs([experiment.experiment_id])


def assert_ended_failed(uri: str, cause: str) -> None:
    """The parent and every unfinished child run FAILED with the fault; nothing registered."""
    client = MlflowClient(uri, registry_uri=uri)
    assert client.search_registered_models() == []
    found = runs(uri)
    parent = next(r for r in found if r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_SWEEP)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[keys.TAG_STATUS] == "failed"
    assert parent.data.tags[keys.TAG_ERROR].startswith(cause)
    for run in found:
        assert run.info.status != "RUNNING", run.info.run_name
        if run.info.status == "FAILED":
            assert run.data.tags[keys.TAG_STATUS] == "failed"


def assert_resumed_and_promoted(result: subprocess.CompletedProcess, uri: str) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "champion: models:/digits-classifier@champion" in result.stdout
    for run in runs(uri):
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        assert keys.TAG_FAULT not in run.data.tags
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_model_version_by_alias("digits-classifier", "champion")


def test_a_full_checkpoint_disk_ends_the_sweep_and_resume_finishes_it(small_disk, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'podium-runs' / 'mlflow.db'}"
    filler = fill(small_disk, leave_kb=450)  # a few epochs' checkpoints
    args = ["run", "--set", f"cluster.storage_path={small_disk}"]
    error = the_error(podium(*args, cwd=work))
    assert error.startswith("podium: error: no space left on device writing the sweep's check")
    assert f"({small_disk}/digits-default-" in error
    assert error.endswith(f"free space there, then `podium {' '.join(args)} --resume`")
    assert_ended_failed(uri, "no space left on device")
    # Only whole checkpoints where --resume reads: every one loads.
    saved = list(small_disk.rglob("checkpoint_*"))
    assert saved
    for folder in saved:
        torch.load(folder / "state.pt", weights_only=True)

    filler.unlink()
    grow(small_disk)  # the rest of the sweep's checkpoints need more than the 3 MB disk had
    assert_resumed_and_promoted(podium(*args, "--resume", cwd=work), uri)


def test_a_full_store_disk_ends_the_sweep_and_resume_finishes_it(store_disk, tmp_path):
    work = store_disk / "work"  # the embedded SQLite store lives in the working folder
    work.mkdir()
    uri = f"sqlite:///{work / 'podium-runs' / 'mlflow.db'}"
    args = ["run", "--set", f"cluster.storage_path={tmp_path / 'ray'}"]
    env = user_env()
    sweep = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args, "--set", "search.num_samples=40"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The disk fills once trials report (the parent run and the first results are in).
    assert sweep.stderr is not None
    lines = [sweep.stderr.readline()]
    while "done:" not in lines[-1]:
        assert lines[-1], "".join(lines)
        lines.append(sweep.stderr.readline())
    filler = fill(store_disk, leave_kb=0)
    started = time.monotonic()
    out, err = sweep.communicate(timeout=300)
    ended = subprocess.CompletedProcess(sweep.args, sweep.returncode, out, "".join(lines) + err)
    error = the_error(ended)
    assert error.startswith(
        f"podium: error: no space left on device writing the MLflow store ({work}/podium-runs/"
    ), error
    assert time.monotonic() - started < 60  # not the writer's old 300 s of retries

    filler.unlink()
    resumed = podium(*args, "--set", "search.num_samples=40", "--resume", cwd=work)
    assert_resumed_and_promoted(resumed, uri)


def test_a_full_artifact_disk_at_promotion_registers_nothing_and_resume_promotes(
    small_disk, tmp_path
):
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'podium-runs' / 'mlflow.db'}"
    filler = fill(small_disk, leave_kb=60)  # the spec fits, the model does not
    args = ["run", "--set", f"tracking.artifact_location={small_disk.as_uri()}/art", *QUICK]
    error = the_error(podium(*args, cwd=work))
    assert error.startswith(
        f"podium: error: no space left on device writing the model ({small_disk.as_uri()}/art"
    ), error
    assert_ended_failed(uri, "no space left on device")
    # The winner's run keeps the status its training gave it.
    assert all(r.info.status == "FINISHED" for r in runs(uri) if keys.TAG_TRIAL_ID in r.data.tags)

    filler.unlink()
    grow(small_disk)  # the rest of the sweep's checkpoints need more than the 3 MB disk had
    assert_resumed_and_promoted(podium(*args, "--resume", cwd=work), uri)
