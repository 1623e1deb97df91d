"""Faults a sweep survives, each provoked for real, each checked for lost or duplicated data.

All sweeps join one simulated cluster (``ray.cluster_utils.Cluster``, shared with
test_cluster.py), as a team's sweeps join a long-lived Ray cluster. Processes
are only ever killed when this module started them: a trial's worker is found among the
descendants of this test process, the driver is a ``podium run`` subprocess we spawned.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from orchestrator.execution.runner import run_experiment
from orchestrator.spec import parse_spec
from tests.fixtures_services import user_env
from tracking import keys

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def cluster(ray_cluster):
    """The session's simulated cluster (tests/fixtures_services.py): three 1-CPU worker nodes."""
    return ray_cluster


def raw_spec(name: str, storage: Path, **over: object) -> dict:
    """A small digits sweep; small batches make an epoch last long enough to interrupt."""
    spec = {
        "name": name,
        "task": "digits",
        "model": {"arch": "mlp", "hidden": [32]},
        "optimizer": {"name": "adam", "lr": {"grid": [0.003, 0.01]}},
        "training": {"max_epochs": 6, "batch_size": 8},
        "search": {"num_samples": 1, "scheduler": "fifo", "searcher": "grid"},
        "resources": {"cpu": 1},
        "cluster": {"storage_path": str(storage), "max_failures": 2},
        "promotion": {"enabled": False},
    }
    for dotted, value in over.items():
        node = spec
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return spec


def trial_checkpoints(storage: Path) -> dict[str, dict[str, list[int]]]:
    """Checkpoint indices by trial id, then trial folder (see :func:`_scan_checkpoints`)."""
    for _ in range(50):
        try:
            return _scan_checkpoints(storage)
        except FileNotFoundError:  # Tune removed an old checkpoint mid-scan (it keeps the last 2)
            time.sleep(0.01)
    return _scan_checkpoints(storage)


def _scan_checkpoints(storage: Path) -> dict[str, dict[str, list[int]]]:
    """Checkpoint indices by trial id, then trial folder, as Tune wrote them to the storage path.

    Tune numbers a trial's checkpoints 0, 1, ... across restarts (and keeps the last 2), so the
    highest index tells how many epochs were checkpointed. A trial that Tune restarts without
    its checkpoint gets a second folder.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for ckpt in storage.rglob("checkpoint_*"):
        if ckpt.is_dir():
            # Folders are named <trainable>_<experiment tag>_<trial index>_<index>_<params>_<date>.
            trial_id = "_".join(ckpt.parent.name.split("_")[2:4])
            out.setdefault(trial_id, {}).setdefault(ckpt.parent.name, []).append(
                int(ckpt.name.split("_")[1])
            )
    return {t: {f: sorted(ix) for f, ix in folders.items()} for t, folders in out.items()}


def checkpoints(storage: Path) -> dict[str, int]:
    """The highest checkpoint index per trial id."""
    return {
        t: max(max(ix) for ix in folders.values())
        for t, folders in trial_checkpoints(storage).items()
    }


def epochs_done(storage: Path) -> int:
    """Checkpointed epochs over all trials."""
    return sum(i + 1 for i in checkpoints(storage).values())


def saved_epoch(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt / "state.pt", weights_only=True)["epoch"])


def wait_for(cond: Callable[[], object], timeout: float, what: str, period: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def descendants_named(title: str) -> list[int]:
    """PIDs of this test process's descendants whose process title starts with ``title``."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            titles[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - mine
        mine |= frontier
    return [pid for pid in mine if titles.get(pid, "").startswith(title)]


@contextmanager
def sqlite_locked(db: Path) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite store: the driver's writes wait, fail and are retried
    (MLflow reports it as temporarily unavailable), so what trials report piles up in the driver."""
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        con.close()  # ends the transaction: the lock goes with it


def histories(uri: str, run_id: str) -> dict[str, list[int]]:
    """Steps logged per metric of one run (with repeats, if any)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    return {
        m: sorted(x.step for x in client.get_metric_history(run_id, m)) for m in run.data.metrics
    }


def trial_runs(uri: str, experiment: str) -> dict[str, object]:
    """Child runs of an experiment by trial id; fails on a trial id with two runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_TRIAL}'")
    by_trial: dict[str, object] = {}
    for r in runs:
        trial_id = r.data.tags[keys.TAG_TRIAL_ID]
        assert trial_id not in by_trial, f"trial {trial_id} has two MLflow runs"
        by_trial[trial_id] = r
    return by_trial


def assert_one_value_per_step(uri: str, run_id: str, epochs: int) -> None:
    h = histories(uri, run_id)
    for metric in keys.EPOCH_METRICS:
        assert h[metric] == list(range(1, epochs + 1)), (metric, h[metric])
    for metric in (keys.TEST_ACCURACY, keys.PARAM_COUNT):
        assert len(h[metric]) == 1, (metric, h[metric])


# --------------------------------------------------------------------------- a dead worker


def test_killed_worker_resumes_from_its_last_checkpoint(cluster, tmp_path):
    storage = tmp_path / "storage"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = parse_spec(raw_spec("worker-kill", storage, optimizer__lr={"grid": [0.003]}))
    killed: list[int] = []

    def kill_mid_training() -> None:
        # After the second checkpoint, SIGKILL the process running the trial.
        wait_for(
            lambda: any(i >= 1 for i in checkpoints(storage).values()),
            120,
            "the trial's second checkpoint",
        )
        pids = wait_for(lambda: descendants_named("ray::ImplicitFunc"), 30, "the trial process")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed.extend(pids)

    killer = threading.Thread(target=kill_mid_training, daemon=True)
    killer.start()
    result = run_experiment(
        spec, tracking_uri=uri, address=cluster.address, verbosity=0, workdir=tmp_path
    )
    killer.join(timeout=5)
    assert killed, "no trial process was killed"
    [row] = result.rows
    assert row.status == "completed", row
    # Resumed, not restarted: 6 epochs produced exactly 6 checkpoints (a restart from epoch 0
    # would have written more), and the last one holds epoch 6.
    [(trial_id, folders)] = trial_checkpoints(storage).items()
    [(trial_dir, indices)] = folders.items()  # one folder: Tune restored the trial, not restarted
    assert max(indices) == 5
    last = next(storage.rglob(f"{trial_dir}/checkpoint_{max(indices):06d}"))
    assert saved_epoch(last) == 6
    # Tune saw the failure and restarted the trial (its error file records the killed worker).
    assert list(storage.rglob(f"{trial_dir}/error.txt")), "Tune recorded no failure"
    assert_one_value_per_step(uri, row.run_id, epochs=6)


# --------------------------------------------------------------------------- NaN / inf


def test_diverging_trial_fails_with_the_reason_and_is_never_promoted(cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = raw_spec(
        "diverge",
        tmp_path / "storage",
        optimizer={"name": "sgd", "lr": {"grid": [0.05, 1.0e12]}},
        training={"max_epochs": 3, "batch_size": 64},
        promotion={"enabled": True, "model_name": "diverge-model"},
    )
    result = run_experiment(
        parse_spec(raw), tracking_uri=uri, address=cluster.address, verbosity=0, workdir=tmp_path
    )
    by_lr = {row.params["optimizer.lr"]: row for row in result.rows}
    bad, good = by_lr[1.0e12], by_lr[0.05]
    assert bad.status == "failed" and good.status == "completed"
    runs = trial_runs(uri, "diverge")
    bad_tags = runs[bad.trial_id].data.tags
    assert bad_tags[keys.TAG_STATUS] == "failed"
    assert "nan" in bad_tags[keys.TAG_ERROR].lower() or "inf" in bad_tags[keys.TAG_ERROR].lower()
    # The sweep went on and promoted the good trial, never the diverged one.
    assert result.decision.winner.trial_id == good.trial_id
    from mlflow.tracking import MlflowClient

    # This store's registry (another test may have pointed MLflow's global one elsewhere).
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(
        "diverge-model", "champion"
    )
    assert champion.run_id == good.run_id


# --------------------------------------------------------------------------- tracking outage


# Seconds away: long enough for several epochs and for MLflow's client to have retried with
# backoff (1, 2, 4 s ...); not much longer, since a client mid-backoff sleeps on after the server
# is back (30 s away cost the sweep 70 s, 8 s about 20).
OUTAGE_S = {"stopped": 8, "frozen": 6, "killed": 5}


def outage(server, kind: str) -> float:
    """Take the tracking server away for a while, one way or another; how long it was away."""
    away = OUTAGE_S[kind]
    if kind == "stopped":  # a clean shutdown, then a restart
        server.stop()
        time.sleep(away)
        server.start()
    elif kind == "frozen":  # SIGSTOP: connections hang instead of being refused
        server.signal(signal.SIGSTOP)
        time.sleep(away)
        server.signal(signal.SIGCONT)
    else:
        server.signal(signal.SIGKILL)  # killed mid-request, restarted on the same store
        time.sleep(away)
        server.start()
    return away


@pytest.mark.parametrize("kind", ["stopped", "frozen", "killed"])
def test_a_tracking_server_outage_loses_nothing(
    cluster, tmp_path, mlflow_server_factory, caplog, monkeypatch, kind
):
    server = mlflow_server_factory()
    storage = tmp_path / "storage"
    epochs = 12
    spec = parse_spec(raw_spec("outage", storage, training={"max_epochs": epochs, "batch_size": 8}))
    seen: dict[str, int] = {}

    def outage_mid_sweep() -> None:
        wait_for(lambda: checkpoints(storage), 120, "the first checkpoint")
        seen["at_down"] = epochs_done(storage)
        outage(server, kind)
        seen["at_up"] = epochs_done(storage)

    thread = threading.Thread(target=outage_mid_sweep, daemon=True)
    thread.start()
    # For this test only: left set, later tests' subprocesses talked to this stopped server.
    for name, value in server.client_env().items():
        monkeypatch.setenv(name, value)
    result = run_experiment(
        spec, tracking_uri=server.url, address=cluster.address, verbosity=0, workdir=tmp_path
    )
    thread.join(timeout=120)
    assert not thread.is_alive() and "at_up" in seen, "the outage did not happen mid-sweep"
    # Training went on while the server was away, and no trial saw an exception.
    assert seen["at_up"] > seen["at_down"]
    assert [r.status for r in result.rows] == ["completed", "completed"], result.rows
    if kind != "frozen":
        # The driver did meet the outage: MLflow's HTTP client retried refused connections (and
        # the writer retries whatever it gives up on). A frozen server only made it wait.
        refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
        assert refused or result.tracking_failures > 0
    runs = trial_runs(server.url, "outage")
    assert set(runs) == {r.trial_id for r in result.rows}
    for row in result.rows:
        assert_one_value_per_step(server.url, row.run_id, epochs)


# --------------------------------------------------------------------------- a killed driver


def podium(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``podium ARGS`` as a user's shell starts it (see ``user_env``), plus ``env``."""
    exe = Path(sys.executable).parent / "podium"
    return subprocess.Popen(
        [str(exe), *args],
        env=user_env(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def grid_of_four(name: str, cluster, tmp_path: Path) -> tuple[Path, str, tuple[str, ...]]:
    """A 4-trial grid, two at a time, 6 epochs each, for a driver to be killed in:
    (its storage folder, its tracking URI, its ``podium run`` arguments)."""
    storage = tmp_path / "storage"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = raw_spec(
        name,
        storage,
        optimizer__lr={"grid": [0.002, 0.004, 0.006, 0.008]},
        search={"num_samples": 1, "scheduler": "fifo", "searcher": "grid", "max_concurrent": 2},
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    return storage, uri, (str(spec_file), "--tracking-uri", uri, "--address", cluster.address)


def test_killed_driver_resumes_with_the_same_trials_and_runs(cluster, tmp_path):
    storage, uri, args = grid_of_four("driver-kill", cluster, tmp_path)
    epochs = 6

    first = podium("run", *args, env={}, cwd=tmp_path)

    def one_done_one_running() -> bool:
        c = checkpoints(storage)
        done = [t for t, i in c.items() if i == epochs - 1]
        running = [t for t, i in c.items() if i < epochs - 1]
        return len(done) >= 1 and len(running) >= 1 and len(c) >= 3

    wait_for(one_done_one_running, 240, "a finished trial and a running one", period=0.02)
    # Kill the driver while epochs that trials checkpointed are still queued in it, not yet in
    # MLflow: the store is locked until a running trial checkpoints one more epoch.
    with sqlite_locked(tmp_path / "mlflow.db"):
        at_lock = checkpoints(storage)

        def one_more_epoch_unlogged() -> bool:
            now = checkpoints(storage)
            return any(now[t] > i for t, i in at_lock.items() if i < epochs - 1)

        wait_for(one_more_epoch_unlogged, 240, "an epoch checkpointed during the lock")
        os.killpg(first.pid, signal.SIGKILL)  # the driver's own process group: nothing else
        first.wait(timeout=30)
    before = trial_checkpoints(storage)
    finished_before = {t for t, i in checkpoints(storage).items() if i == epochs - 1}
    runs_before = {t: r.info.run_id for t, r in trial_runs(uri, "driver-kill").items()}
    saved = checkpoints(storage)
    logged = {  # epochs in MLflow per checkpointed trial (0 for one whose run was never created)
        t: max(histories(uri, runs_before[t]).get(keys.VAL_ACCURACY) or [0])
        if t in runs_before
        else 0
        for t in saved
    }
    # The fault happened: some trial checkpointed an epoch its run does not have.
    assert any(saved[t] + 1 > logged[t] for t in saved), (logged, saved)

    second = podium("run", *args, "--resume", env={}, cwd=tmp_path)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out.decode()[-3000:]

    after = trial_checkpoints(storage)
    assert set(before) <= set(after) and len(after) == 4  # the same four trials; none added
    for trial in finished_before:
        # Same folders and no newer checkpoint. Tune may still prune the one extra checkpoint
        # the kill left (it keeps the last 2), so compare the newest index, not the whole list.
        assert after[trial].keys() == before[trial].keys(), f"finished trial {trial} restarted"
        newest = {f: max(ix) for f, ix in after[trial].items()}
        assert newest == {f: max(ix) for f, ix in before[trial].items()}, (
            f"finished trial {trial} was rerun"
        )
    # All reached the end (else say which, and what the resumed driver printed).
    reached = checkpoints(storage)
    assert all(i == epochs - 1 for i in reached.values()), (reached, out.decode()[-4000:])
    runs_after = trial_runs(uri, "driver-kill")
    assert len(runs_after) == 4
    for trial_id, run_id in runs_before.items():  # the same MLflow runs continued
        assert runs_after[trial_id].info.run_id == run_id
    for run in runs_after.values():
        assert run.data.tags[keys.TAG_STATUS] == "completed"
        assert_one_value_per_step(uri, run.info.run_id, epochs)


def _tune_state_file(storage: Path) -> Path | None:
    states = sorted(storage.glob("*/experiment_state-*.json"))
    return states[-1] if states else None


def _whole_state(storage: Path) -> tuple[Path, bytes] | None:
    """(Tune's newest trial-state file, its bytes) if they parse (Tune may be copying it)."""
    import json

    state = _tune_state_file(storage)
    if state is None:
        return None
    data = state.read_bytes()
    try:
        json.loads(data)
    except ValueError:
        return None
    return state, data


@pytest.mark.parametrize("leftover", ["truncated", "older than the searcher's"])
def test_a_resume_reads_tunes_state_as_one_save_wrote_it(cluster, tmp_path, leftover):
    """A driver killed while Tune copies its state files one by one leaves them cut off or
    from two saves; here the test leaves them so after the kill, as the kill would have."""
    storage, uri, args = grid_of_four("state-mix", cluster, tmp_path)
    epochs = 6
    first = podium("run", *args, env={}, cwd=tmp_path)
    # The trials' state while the grid has created only its first two trials.
    early = wait_for(
        lambda: len(checkpoints(storage)) >= 1 and _whole_state(storage), 240, "a save"
    )
    assert early is not None
    wait_for(
        lambda: len(checkpoints(storage)) >= 3 and max(checkpoints(storage).values()) == epochs - 1,
        240,
        "a finished trial and a third one started",
        period=0.02,
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    state, data = early
    if leftover == "truncated":
        state.write_bytes(b"")
    else:
        assert _tune_state_file(storage) == state  # the same driver session's file
        state.write_bytes(data)  # its searcher's state is newer: it created the third trial

    second = podium("run", *args, "--resume", env={}, cwd=tmp_path)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out.decode()[-3000:]
    reached = checkpoints(storage)
    assert len(reached) == 4 and all(i == epochs - 1 for i in reached.values()), (
        reached,
        out.decode()[-3000:],
    )
    runs = trial_runs(uri, "state-mix")
    assert len(runs) == 4
    for run in runs.values():
        assert run.data.tags[keys.TAG_STATUS] == "completed"
