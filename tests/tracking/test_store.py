"""Tracking set-up and the buffered writer, against a real SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tracking import keys
from tracking.store import Store, default_artifact_location, resolve_tracking_uri
from tracking.writer import RunWriter


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = resolve_tracking_uri(None, None, workdir=tmp_path)
    assert default == f"sqlite:///{tmp_path.resolve() / 'podium-runs' / 'mlflow.db'}"
    assert resolve_tracking_uri(None, "sqlite:///spec.db", tmp_path) == "sqlite:///spec.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None, "sqlite:///spec.db", tmp_path) == "http://127.0.0.1:5999"
    assert (
        resolve_tracking_uri("sqlite:///flag.db", "sqlite:///spec.db", tmp_path)
        == "sqlite:///flag.db"
    )
    assert default_artifact_location(default).endswith("podium-runs/artifacts")


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_experiment_is_created_once_with_artifacts_beside_the_store(store):
    first = store.ensure_experiment("exp")
    assert store.ensure_experiment("exp") == first
    exp = store.client.get_experiment(first)
    assert exp.artifact_location.endswith("artifacts")


def test_a_driver_that_loses_the_race_to_create_the_experiment_uses_the_winners(tmp_path):
    """Two drivers started at once in one folder both find no experiment; the one whose insert
    comes second must take the first one's experiment, not fail the sweep."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    winner, loser = Store(uri), Store(uri)
    read = loser.client.get_experiment_by_name
    calls = []

    def read_before_the_winner_inserts(name):
        calls.append(name)
        if len(calls) == 1:  # the loser's first read ...
            found = read(name)
            winner_id.append(winner.ensure_experiment(name))  # ... then the winner inserts
            return found
        return read(name)

    winner_id: list[str] = []
    loser.client.get_experiment_by_name = read_before_the_winner_inserts
    assert loser.ensure_experiment("exp") == winner_id[0]
    assert len(calls) == 2
    assert [e.name for e in winner.client.search_experiments()].count("exp") == 1


def test_experiments_open_in_the_ui_as_model_training_not_genai(store):
    made = store.client.get_experiment(store.ensure_experiment("new"))
    assert made.tags[keys.TAG_EXPERIMENT_KIND] == "custom_model_development"
    old = store.client.create_experiment("made-before-podium-tagged-them")
    store.ensure_experiment("made-before-podium-tagged-them")
    tagged = store.client.get_experiment(old)
    assert tagged.tags[keys.TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_writer_logs_each_step_once_and_creates_runs_lazily(store):
    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    writer = RunWriter(store, exp, parent)
    writer.trial_started("t1", "trial one", {"optimizer.lr": 0.1, "model.hidden": [64]}, {})
    for step in (1, 2, 2, 1, 3):  # a resumed trial may re-report steps it already reported
        writer.log_metrics("t1", {keys.VAL_ACCURACY: step / 10}, step)
    writer.set_tags("t2", {keys.TAG_STATUS: "failed"})  # failed before Tune reported its start
    writer.trial_ended("t1", "FINISHED")
    assert writer.close(timeout_s=60)
    client = MlflowClient(store.uri)
    history = client.get_metric_history(writer.run_id("t1"), keys.VAL_ACCURACY)
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    run = client.get_run(writer.run_id("t1"))
    assert run.data.params == {"optimizer.lr": "0.1", "model.hidden": "[64]"}
    assert run.data.tags[keys.TAG_PARENT_RUN] == parent and run.info.status == "FINISHED"
    assert client.get_run(writer.run_id("t2")).data.tags[keys.TAG_STATUS] == "failed"


def test_a_rewound_trial_logs_the_epochs_it_trains_again(store):
    # A PBT exploit sends a trial at epoch 3 back to another trial's epoch 1: epochs 2 and 3
    # are trained again, with other hyperparameters, and are new results.
    exp = store.ensure_experiment("exp")
    writer = RunWriter(store, exp, store.start_parent(exp, "sweep", {}))
    for step in (1, 2, 3):
        writer.log_metrics("t1", {keys.VAL_ACCURACY: step / 10}, step)
    writer.rewind("t1", 1)
    for step in (2, 3, 3):  # still each step once after the rewind
        writer.log_metrics("t1", {keys.VAL_ACCURACY: step / 10 + 0.5}, step)
    assert writer.close(timeout_s=60)
    history = MlflowClient(store.uri).get_metric_history(writer.run_id("t1"), keys.VAL_ACCURACY)
    assert sorted((m.step, m.value) for m in history) == [
        (1, 0.1),
        (2, 0.2),
        (2, 0.7),
        (3, pytest.approx(0.3)),
        (3, 0.8),
    ]


def test_resumed_writer_continues_the_same_runs(store):
    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    first = RunWriter(store, exp, parent)
    first.trial_started("t1", "t1", {}, {})
    first.log_metrics("t1", {keys.VAL_LOSS: 1.0}, 1)
    first.close()
    again = RunWriter(store, exp, parent, existing=store.child_runs(exp, parent))
    assert again.run_id("t1") == first.run_id("t1")
    again.log_metrics("t1", {keys.VAL_LOSS: 9.0}, 1)  # already there: skipped
    again.log_metrics("t1", {keys.VAL_LOSS: 0.5}, 2)
    again.close()
    history = store.client.get_metric_history(first.run_id("t1"), keys.VAL_LOSS)
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]


def test_interleaved_trials_land_in_few_writes_each_in_its_own_order(store):
    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    writes = []
    log_batch = store.client.log_batch

    def counting_log_batch(run_id, **kw):  # the real store call, counted
        writes.append(run_id)
        return log_batch(run_id, **kw)

    store.client.log_batch = counting_log_batch
    writer = RunWriter(store, exp, parent, linger_s=1.0)
    for trial in ("a", "b"):
        writer.trial_started(trial, trial, {}, {})
    for step in range(1, 11):  # two trials reporting alternately, as two Tune slots do
        for trial in ("a", "b"):
            writer.log_metrics(trial, {keys.VAL_ACCURACY: step / 10}, step)
    writer.trial_ended("a", "FINISHED")
    assert writer.close(timeout_s=60)
    client = MlflowClient(store.uri)
    for trial in ("a", "b"):
        history = client.get_metric_history(writer.run_id(trial), keys.VAL_ACCURACY)
        assert sorted(m.step for m in history) == list(range(1, 11))
    assert client.get_run(writer.run_id("a")).info.status == "FINISHED"
    metric_writes = [w for w in writes if w in (writer.run_id("a"), writer.run_id("b"))]
    assert len(metric_writes) <= 4  # 20 reports, merged per trial (not one write per report)


def test_a_new_sqlite_store_is_seeded_from_the_cached_schema_and_works(tmp_path, monkeypatch):
    from tracking.store import seed_sqlite_store

    cache = tmp_path / "cache"
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    assert seed_sqlite_store(first, cache)  # builds the template, then copies it
    assert len(list(cache.glob("mlflow-*-schema.db"))) == 1
    assert seed_sqlite_store(second, cache)  # copies the cached template
    assert not seed_sqlite_store(second, cache)  # an existing store is never replaced
    monkeypatch.chdir(tmp_path / "b")
    store = Store(f"sqlite:///{second}")
    # MLflow added its Default experiment for *this* store when it opened the copy.
    default = store.client.get_experiment("0")
    assert default.name == "Default" and str(tmp_path / "b") in default.artifact_location
    exp = store.ensure_experiment("seeded")
    run = store.start_parent(exp, "sweep", {})
    store.client.log_metric(run, "m", 1.0)
    assert MlflowClient(f"sqlite:///{second}").get_run(run).data.metrics == {"m": 1.0}
    assert MlflowClient(f"sqlite:///{first}").search_experiments()[0].name == "Default"


def test_a_seeded_store_logs_ahead_so_a_reader_does_not_block_the_writer(tmp_path):
    """``mlflow ui`` reading mid-sweep must not stall the sweep's writes; in SQLite's default
    rollback-journal mode an open read transaction blocks every commit."""
    import sqlite3

    from tracking.store import seed_sqlite_store

    path = tmp_path / "mlflow.db"
    assert seed_sqlite_store(path, tmp_path / "cache")
    assert not Path(f"{path}-wal").exists()  # the seeding connection checkpointed its log
    reader = sqlite3.connect(path, timeout=0.1)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store = Store(f"sqlite:///{path}")
    exp = store.ensure_experiment("exp")
    run = store.start_parent(exp, "sweep", {})
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # holds a snapshot
    store.client.log_metric(run, "m", 1.0)  # commits while the read transaction is open
    assert reader.execute("SELECT count(*) FROM metrics").fetchone() == (0,)  # its snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT value FROM metrics").fetchall() == [(1.0,)]
    reader.close()


def _counting(store, calls):
    """Count the writer's store calls by name (the real calls still run)."""
    for name in ("create_run", "log_batch", "set_terminated"):
        real = getattr(store.client, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls.append(_name)
            return _real(*a, **kw)

        setattr(store.client, name, counted)


def test_a_short_trial_lands_in_three_writes(store):
    """Start, reports, tags and end that arrive together: one run, one merged write, its end."""
    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    calls: list[str] = []
    _counting(store, calls)
    writer = RunWriter(store, exp, parent, linger_s=1.0)
    writer.trial_started("t", "t", {"optimizer.lr": 0.01}, {})
    writer.log_metrics("t", {keys.VAL_ACCURACY: 0.5, keys.EPOCH: 1}, 1)
    writer.set_tags("t", {keys.TAG_NODE: "n1"})
    writer.log_metrics("t", {keys.VAL_ACCURACY: 0.7, keys.TEST_ACCURACY: 0.6}, 2)
    writer.set_tags("t", {keys.TAG_STATUS: "completed"})
    writer.trial_ended("t", "FINISHED")
    assert writer.close(timeout_s=60)
    assert calls == ["create_run", "log_batch", "set_terminated"]
    run = MlflowClient(store.uri).get_run(writer.run_id("t"))
    assert run.data.params == {"optimizer.lr": "0.01"}
    assert run.data.metrics == {keys.VAL_ACCURACY: 0.7, keys.EPOCH: 1, keys.TEST_ACCURACY: 0.6}
    assert run.data.tags[keys.TAG_NODE] == "n1" and run.data.tags[keys.TAG_STATUS] == "completed"
    assert run.info.status == "FINISHED"


def test_a_refused_value_costs_only_its_own_op(store):
    """A merged write the store refuses is written again op by op: only the bad op is lost."""
    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    writer = RunWriter(store, exp, parent, linger_s=1.0)
    writer.trial_started("t", "t", {"optimizer.lr": 0.01}, {})
    writer.log_metrics("t", {keys.VAL_ACCURACY: 0.5}, 1)
    writer.set_tags("t", {"a/../b": "x"})  # MLflow refuses this tag name
    writer.log_metrics("t", {keys.VAL_ACCURACY: 0.7}, 2)
    writer.trial_ended("t", "FINISHED")
    assert writer.close(timeout_s=60)
    client = MlflowClient(store.uri)
    run = client.get_run(writer.run_id("t"))
    assert run.data.params == {"optimizer.lr": "0.01"} and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, keys.VAL_ACCURACY)
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.7)]
    assert "a/../b" not in run.data.tags
    assert writer.failures >= 2  # the merged write, then the bad op alone


def test_a_full_queue_makes_callers_wait_until_the_store_catches_up(store, tmp_path, caplog):
    """The writer's queue is bounded: with the store locked, reports past the limit wait (the
    sweep's memory stays bounded); once the store is back, every one of them lands."""
    import sqlite3
    import threading

    exp = store.ensure_experiment("exp")
    parent = store.start_parent(exp, "sweep", {})
    writer = RunWriter(store, exp, parent, retry_s=0.1, linger_s=0.0, max_backlog=4)
    reported = threading.Event()

    def report() -> None:
        for step in range(1, 11):
            writer.log_metrics("t", {keys.VAL_ACCURACY: step / 10}, step)
        reported.set()

    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=60, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the store is unavailable: writes fail and are retried
    threading.Thread(target=report, daemon=True).start()
    try:
        assert not reported.wait(3), "the reports did not wait for a full queue"
        assert writer._pending <= 4
        assert "MLflow writes are waiting" in caplog.text
    finally:
        lock.close()
    assert reported.wait(60)
    assert writer.close(timeout_s=60)
    history = store.client.get_metric_history(writer.run_id("t"), keys.VAL_ACCURACY)
    assert sorted(m.step for m in history) == list(range(1, 11))
