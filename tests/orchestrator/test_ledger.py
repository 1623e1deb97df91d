"""The ledger of finished trials: what goes in comes back, a torn line costs only itself."""

from __future__ import annotations

import math

from orchestrator.execution.ledger import (
    LEDGER_FILE,
    FinishedTrial,
    ObjectLedger,
    TrialLedger,
    last_result,
    open_ledger,
)
from tracking import keys


def trial(trial_id: str, **last: object) -> FinishedTrial:
    return FinishedTrial(trial_id, dict(last), {"optimizer.lr": 0.01, "hidden": [32, 16]}, None)


def test_entries_come_back_as_written_with_nan_and_lists(tmp_path):
    ledger = TrialLedger(tmp_path / "exp" / "ledger.jsonl")  # the folder is made on first write
    ledger.append(trial("t1", **{keys.DONE: True, keys.TEST_ACCURACY: 0.93}))
    diverged = FinishedTrial("t2", {keys.FAILED: "loss is nan", "train_loss": math.nan}, {}, "/c")
    ledger.append(diverged)
    got = TrialLedger(ledger.path).entries()
    assert got["t1"] == trial("t1", **{keys.DONE: True, keys.TEST_ACCURACY: 0.93})
    assert math.isnan(got["t2"].last["train_loss"]) and got["t2"].checkpoint == "/c"
    assert got["t1"].status == "completed" and got["t2"].status == "failed"


def test_a_trial_recorded_twice_is_its_newest_line(tmp_path):
    ledger = TrialLedger(tmp_path / "ledger.jsonl")
    ledger.append(trial("t1", epoch=3))
    ledger.append(trial("t1", epoch=6, **{keys.DONE: True}))
    assert ledger.entries()["t1"].last == {"epoch": 6, keys.DONE: True}


def test_a_torn_last_line_is_skipped_and_the_rest_read(tmp_path, caplog):
    ledger = TrialLedger(tmp_path / "ledger.jsonl")
    ledger.append(trial("t1"))
    with open(ledger.path, "a") as f:
        f.write('{"trial_id": "t2", "last": {"epo')  # a driver killed mid-write
    assert list(TrialLedger(ledger.path).entries()) == ["t1"]
    assert "ledger.jsonl:2: skipping an unreadable line" in caplog.text


def test_counts_include_an_earlier_drivers_trials_once(tmp_path):
    first = TrialLedger(tmp_path / "ledger.jsonl")
    first.append(trial("t1", **{keys.DONE: True}))
    first.append(trial("t2"))
    assert first.counts == {"completed": 1, "stopped": 1}
    resumed = TrialLedger(first.path)
    assert resumed.counts == {"completed": 1, "stopped": 1}
    resumed.append(trial("t2"))  # Tune restored it as ended too: recorded again, counted once
    resumed.append(FinishedTrial("t3", {}, {}, None, error="RuntimeError: boom"))
    assert resumed.counts == {"completed": 1, "stopped": 1, "failed": 1}


def test_last_result_keeps_the_metrics_and_how_the_trial_ended():
    result = {
        "val_accuracy": 0.9,
        keys.DONE: True,
        keys.FAILED: "loss is nan",
        keys.EPOCH: 3,
        "training_iteration": 3,
        keys.NODE: "worker-1",  # a tag of the run already
        "time_this_iter_s": 0.1,  # Tune's bookkeeping
        "config": {"optimizer": {"lr": 0.1}},  # kept once, as the entry's config
        keys.REPLAY: [{"epoch": 1}],  # a restored history: in MLflow already
    }
    assert last_result(result) == {
        "val_accuracy": 0.9,
        keys.DONE: True,
        keys.FAILED: "loss is nan",
        keys.EPOCH: 3,
        "training_iteration": 3,
    }
    assert last_result(None) == {}


def test_a_line_after_a_torn_one_is_read(tmp_path):
    # A full disk cut a write short; after freeing space the next driver's lines still count.
    ledger = TrialLedger(tmp_path / "ledger.jsonl")
    ledger.append(trial("t1", epoch=2))
    with ledger.path.open("a") as f:
        f.write('{"trial_id": "t2", "la')
    TrialLedger(ledger.path).append(trial("t3", **{keys.DONE: True}))
    assert sorted(TrialLedger(ledger.path).entries()) == ["t1", "t3"]


# ---------------------------------------------------------------- on object storage


def test_on_object_storage_each_trial_is_one_object_and_a_torn_one_costs_only_itself(
    s3_server, monkeypatch, caplog
):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = s3_server.bucket()
    experiment = f"s3://{bucket}/runs/exp-1"
    ledger = open_ledger(experiment)
    assert isinstance(ledger, ObjectLedger) and ledger.entries() == {}
    ledger.append(trial("t1", epoch=3))
    ledger.append(trial("t1", epoch=6, **{keys.DONE: True}))  # recorded again: overwritten
    ledger.append(FinishedTrial("t2", {"epoch": 2}, {}, f"s3://{bucket}/runs/exp-1/c"))
    assert sorted(s3_server.objects(bucket)) == [
        "runs/exp-1/podium-trials/t1.json",
        "runs/exp-1/podium-trials/t2.json",
    ]
    # What no S3 upload leaves, but a hand-edited bucket might: it is skipped, the rest read.
    s3_server.client().put_object(
        Bucket=bucket, Key="runs/exp-1/podium-trials/t3.json", Body=b'{"trial_id": "t3", "la'
    )
    resumed = open_ledger(experiment)
    got = resumed.entries()
    assert sorted(got) == ["t1", "t2"] and got["t1"].last == {"epoch": 6, keys.DONE: True}
    assert got["t2"].checkpoint == f"s3://{bucket}/runs/exp-1/c"
    assert "t3.json: skipping an unreadable record" in caplog.text
    assert resumed.counts == {"completed": 1, "stopped": 1}


def test_a_folder_keeps_the_one_file_ledger(tmp_path):
    ledger = open_ledger(str(tmp_path / "exp"))
    assert type(ledger) is TrialLedger and ledger.path == tmp_path / "exp" / LEDGER_FILE
