"""Tune's saved state stays linear in the trials with ``cluster.storage_path`` set, at every save.

Issue 31: the one-object snapshot of Tune's state (orchestrator/execution/_ray/state.py) was handed
to Tune's experiment syncer inside the copy command, and Tune pickles that syncer with every trial's
storage context: each save embedded the previous snapshot in every trial, so a 1,000-trial sweep
reached a 4.4 GB ``experiment_state`` file. A sweep of a few trials saved once or twice cannot
show that; this one saves many times (a short save period) over enough trials to grow, in a folder
and in an S3 bucket, and reads the size of every save's snapshot as it is made.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from orchestrator.execution._ray import state as tune_state
from orchestrator.execution.runner import run_experiment
from orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow
TRIALS = 60
PER_TRIAL = 20_000  # bytes of Tune's state per trial: ~3-5 KB measured; the bound
PER_ENTRY = 20_000  # one trial's serialized entry (its config, storage context, results)


def _spec(name: str, storage: str):
    return parse_spec(
        {
            "name": name,
            "task": "digits",
            "model": {"arch": "mlp", "hidden": [8]},
            "optimizer": {"name": "adam", "lr": {"loguniform": [0.001, 0.05]}},
            "training": {"max_epochs": 1, "batch_size": 512},
            "search": {"num_samples": TRIALS, "scheduler": "fifo", "searcher": "random"},
            "resources": {"cpu": 1},
            "cluster": {"storage_path": storage},
            "promotion": {"enabled": False},
        }
    )


class _Saves:
    """Wraps :func:`tune_state.snapshot_of` to read each save as Tune made it: the snapshot's
    size, its ``experiment_state`` file's size and its largest trial entry."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []  # zip, state, largest entry, entries
        self._made = tune_state.snapshot_of

    def __call__(self, staging: str, session: str) -> bytes:
        body = self._made(staging, session)
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            name = next(n for n in z.namelist() if n.startswith("experiment_state-"))
            state = z.read(name)
        entries = [trial_json for trial_json, _ in json.loads(state)["trial_data"]]
        self.rows.append((len(body), len(state), max(map(len, entries)), len(entries)))
        return body


@pytest.fixture(params=["folder", "s3"])
def storage(request, tmp_path, monkeypatch):
    """Where the sweep keeps Tune's state: a folder, or a bucket on the test S3 server; yields
    (the storage path, a function from a file name to the sizes of the files so named)."""
    if request.param == "folder":
        root = tmp_path / "storage"
        yield str(root), lambda prefix: [p.stat().st_size for p in root.rglob(f"{prefix}*")]
        return
    s3 = request.getfixturevalue("s3_server")
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)  # the local Ray's workers inherit them
    bucket = s3.bucket()

    def sizes(prefix: str) -> list[int]:
        objects = s3.objects(bucket).items()
        return [n for key, n in objects if key.rsplit("/", 1)[-1].startswith(prefix)]

    yield f"s3://{bucket}/runs", sizes


def test_tunes_state_stays_linear_in_the_trials_at_every_save(storage, tmp_path, monkeypatch):
    path, sizes = storage
    saves = _Saves()
    monkeypatch.setattr(tune_state, "snapshot_of", saves)
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.2")
    # Tune creates trials a few at a time (200 ahead by default), as in a sweep of thousands.
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "4")  # many saves in a short sweep
    result = run_experiment(
        _spec("growth", path), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", verbosity=0
    )
    assert [r.status for r in result.rows] == ["completed"] * TRIALS, result.rows
    assert all(r.run_id is not None for r in result.rows)  # each with its MLflow run

    # Many saves, and trials created between them: each new trial's storage context is a copy
    # of the experiment's, taken after the saves before it. With the bug, the state reached
    # 2 GB by the twelfth save; the bound is crossed by the third.
    assert len(saves.rows) >= 10, saves.rows
    for zipped, state, entry, _ in saves.rows:
        assert state <= PER_TRIAL * TRIALS and zipped <= PER_TRIAL * TRIALS, saves.rows
        assert entry <= PER_ENTRY, saves.rows
    # And what is left in the storage, the final save's files as Tune and Podium wrote them.
    for prefix in ("experiment_state-", tune_state.SNAPSHOT):
        found = sizes(prefix)
        assert found and max(found) <= PER_TRIAL * TRIALS, (prefix, found)
