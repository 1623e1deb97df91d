"""Epochs a killed driver never wrote reach MLflow on --resume, once each, in a real SQLite store.

The driver logs what trials report through a queue; a driver killed between a trial's checkpoint
and the queue reaching MLflow loses those epochs. tests/integration/test_faults.py provokes that
for real; these tests pin the driver side down step by step. The callback only reads a trial's id,
so a plain namespace stands in for Tune's trial object.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orchestrator.execution.callbacks import MlflowTrialLogger
from tracking import keys
from tracking.store import Store
from tracking.writer import RunWriter


def epoch(n: int) -> dict:
    return {keys.EPOCH: n, keys.TRAIN_LOSS: 1 / n, keys.VAL_ACCURACY: n / 10}


@pytest.fixture
def killed_after_three_epochs(tmp_path):
    """A store whose trial run has epochs 1-3 and was never ended (its driver was killed)."""
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    first = RunWriter(store, exp, parent)
    first.trial_started("t1", "t1", {}, {})
    for n in (1, 2, 3):
        first.log_metrics("t1", {k: v for k, v in epoch(n).items() if k != keys.EPOCH}, n)
    assert first.flush(timeout_s=60)
    return store, exp, parent, first.run_id("t1")


def resumed(store, exp, parent) -> tuple[MlflowTrialLogger, RunWriter]:
    writer = RunWriter(store, exp, parent, existing=store.child_runs(exp, parent))
    return MlflowTrialLogger(writer, {}), writer


def steps(store, run_id, metric=keys.VAL_ACCURACY) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in store.client.get_metric_history(run_id, metric))


def test_first_report_after_a_restore_fills_the_lost_epochs(killed_after_three_epochs):
    store, exp, parent, run_id = killed_after_three_epochs
    logger, writer = resumed(store, exp, parent)
    assert writer.left_open("t1")
    trial = SimpleNamespace(trial_id="t1")
    # The trial restored its epoch-4 checkpoint (epoch 4 never reached MLflow) and trains on.
    replay = [epoch(n) for n in (1, 2, 3, 4)]
    logger.on_trial_result(0, [], trial, {**epoch(5), keys.REPLAY: replay})
    logger.on_trial_result(0, [], trial, epoch(6))
    assert writer.close(timeout_s=60)
    assert steps(store, run_id) == [(n, n / 10) for n in range(1, 7)]
    assert [s for s, _ in steps(store, run_id, keys.TRAIN_LOSS)] == list(range(1, 7))


def test_a_trial_that_ended_unrecorded_is_completed_from_its_checkpoint(killed_after_three_epochs):
    store, exp, parent, run_id = killed_after_three_epochs
    logger, writer = resumed(store, exp, parent)
    last = {**epoch(5), keys.TEST_ACCURACY: 0.9, keys.DONE: True}
    logger.settle("t1", last, None, [epoch(n) for n in range(1, 6)])
    assert writer.close(timeout_s=60)
    run = store.client.get_run(run_id)
    assert steps(store, run_id) == [(n, n / 10) for n in range(1, 6)]
    assert steps(store, run_id, keys.TEST_ACCURACY) == [(5, 0.9)]
    assert run.info.status == "FINISHED" and run.data.tags[keys.TAG_STATUS] == "completed"


def test_settling_leaves_ended_and_live_trials_alone(killed_after_three_epochs):
    store, exp, parent, run_id = killed_after_three_epochs
    store.end_run(run_id, "FINISHED")  # its end did land: nothing to settle
    logger, writer = resumed(store, exp, parent)
    assert not writer.left_open("t1")
    logger.settle("t1", epoch(5), None, [epoch(n) for n in range(1, 6)])
    logger.on_trial_result(0, [], SimpleNamespace(trial_id="t2"), epoch(1))
    logger.settle("t2", epoch(1), "boom", [epoch(1)])  # reported this session: Tune ends it
    assert writer.close(timeout_s=60)
    assert [s for s, _ in steps(store, run_id)] == [1, 2, 3]
    t2 = store.client.get_run(writer.run_id("t2"))
    assert t2.info.status == "RUNNING" and keys.TAG_STATUS not in t2.data.tags


def test_a_trial_that_failed_unrecorded_is_ended_failed_with_its_error(killed_after_three_epochs):
    store, exp, parent, run_id = killed_after_three_epochs
    logger, writer = resumed(store, exp, parent)
    logger.settle("t1", epoch(3), "RuntimeError: worker died", [])
    assert writer.close(timeout_s=60)
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[keys.TAG_STATUS] == "failed"
    assert run.data.tags[keys.TAG_ERROR] == "RuntimeError: worker died"


def test_a_trial_an_earlier_driver_put_in_the_ledger_is_settled_from_it(
    killed_after_three_epochs, tmp_path
):
    """The killed driver had recorded the trial's end in the sweep's ledger (and Tune had let go
    of it) before MLflow got its last epochs: the resumed driver settles it from the ledger."""
    import json

    import torch

    from orchestrator.execution.fit import settle_ended_trials
    from orchestrator.execution.ledger import FinishedTrial
    from workers.trial.checkpoint import MANIFEST_KEY, STATE_FILE

    store, exp, parent, run_id = killed_after_three_epochs
    ckpt = tmp_path / "checkpoint_000004"
    ckpt.mkdir()
    history = {"trial_id": "t1", "epochs": [epoch(n) for n in range(1, 6)]}
    torch.save({MANIFEST_KEY: json.dumps({"files": {}, "history": history})}, ckpt / STATE_FILE)
    last = {**epoch(5), keys.TEST_ACCURACY: 0.9, keys.DONE: True}
    logger, writer = resumed(store, exp, parent)
    settle_ended_trials({"t1": FinishedTrial("t1", last, {}, str(ckpt))}, logger)
    assert writer.close(timeout_s=60)
    assert steps(store, run_id) == [(n, n / 10) for n in range(1, 6)]
    assert store.client.get_run(run_id).data.tags[keys.TAG_STATUS] == "completed"
