"""Sweeps whose Tune state, checkpoints and ledger live on object storage, on Ray nodes that
share no folder for them.

The S3 API is real: moto's standalone server (a dev dependency) on this host. The trials run on
a worker node in a network namespace of its own, joined to the host by a veth pair, so they
reach the Ray head and the S3 server across a real (virtual) network link; the driver's folder
is hidden from that node (an empty tmpfs over it), so nothing can pass through a shared disk.
Where this machine cannot make a network namespace (no root, no iproute2), the worker runs on
loopback with the folder still hidden, and the test says so in its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_services import (
    NetNamespace,
    RayNodes,
    S3Server,
    user_env,
    write_cluster_spec,
)
from tests.integration.test_faults import assert_one_value_per_step, trial_runs, wait_for
from tracking import keys

pytestmark = pytest.mark.slow
WORKER = "netns-worker"


@pytest.fixture(scope="module")
def link():
    why = NetNamespace.unavailable()
    if why is not None:
        print(f"no network namespace ({why}): the worker node runs on loopback")
        yield None
        return
    ns = NetNamespace().create()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture(scope="module")
def s3(link):
    server = S3Server(host=link.outer_ip if link else "127.0.0.1").start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def cluster(link, s3, tmp_path_factory):
    """A head that runs no trials and a 2-CPU worker across the link; both have the S3
    variables, as every node of a real cluster needs them. Yields (nodes, the driver's folder)."""
    driver_home = tmp_path_factory.mktemp("driver")
    nodes = RayNodes(ip=link.outer_ip if link else "127.0.0.1", env=s3.env())
    try:
        nodes.start_node(head=True, name="head", num_cpus=0)
        nodes.start_node(name=WORKER, num_cpus=2, netns=link, hide=driver_home)
        yield nodes, driver_home
    finally:
        nodes.cleanup()


def write_spec(folder: Path, name: str, storage: str, **sections: object) -> Path:
    return write_cluster_spec(folder, name, storage=storage, **sections)


def podium(cluster, s3, *args: str) -> subprocess.Popen:
    nodes, home = cluster
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "podium"), *args, "--address", nodes.address],
        env=user_env(s3.env(), nodes.env()),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def store_uri(cluster) -> str:
    return f"sqlite:///{cluster[1] / 'podium-runs' / 'mlflow.db'}"


def newest_checkpoints(s3: S3Server, bucket: str) -> dict[str, int]:
    """The newest whole checkpoint's index per trial id, from the bucket's keys (a checkpoint
    is one object, state.pt, which S3 shows only once it is whole)."""
    out: dict[str, int] = {}
    for key in s3.objects(bucket):
        parts = key.split("/")
        if parts[-1] == "state.pt" and parts[-2].startswith("checkpoint_"):
            trial_id = "_".join(parts[-3].split("_")[2:4])  # podium_trial_<exp>_<index>_...
            out[trial_id] = max(out.get(trial_id, -1), int(parts[-2].split("_")[1]))
    return out


@pytest.fixture(scope="module")
def s3_sweep(cluster, s3) -> str:
    """A two-trial sweep on the cluster, its storage a fresh bucket; its champion is registered
    as ``s3-sweep-model``. Returns the bucket."""
    bucket = s3.bucket()
    spec = write_spec(cluster[1], "s3-sweep", f"s3://{bucket}/runs")
    code, out = finish(podium(cluster, s3, "run", str(spec)))
    assert code == 0, out[-4000:]
    return bucket


def test_a_two_node_sweep_keeps_everything_in_the_bucket_and_promotes(cluster, s3, s3_sweep):
    from mlflow.tracking import MlflowClient

    nodes, home = cluster
    bucket = s3_sweep

    keys_ = list(s3.objects(bucket))
    assert any("/experiment_state-" in k for k in keys_), keys_
    ledger = sorted(k.rsplit("/", 1)[1] for k in keys_ if "/podium-trials/" in k)
    assert len(ledger) == 2 and all(n.endswith(".json") for n in ledger)
    assert newest_checkpoints(s3, bucket) and all(
        i == 1 for i in newest_checkpoints(s3, bucket).values()
    )
    # Tune's storage is the bucket: nothing of it on the driver's disk.
    assert not (home / "podium-runs" / "ray_results").exists()

    uri = store_uri(cluster)
    runs = trial_runs(uri, "s3-sweep")
    assert len(runs) == 2
    for run in runs.values():  # every trial ran across the link, on the worker node
        assert run.data.tags[keys.TAG_NODE].endswith(f"/{WORKER}"), run.data.tags[keys.TAG_NODE]
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(
        "s3-sweep-model", "champion"
    )
    assert champion.run_id in {r.info.run_id for r in runs.values()}


def test_a_registry_teacher_reaches_the_worker_through_the_bucket(cluster, s3, s3_sweep):
    """The worker node cannot see the driver's folder: the teacher the driver fetched from the
    registry must reach it through the bucket."""
    nodes, home = cluster
    bucket = s3.bucket()
    teacher = "models:/s3-sweep-model@champion"
    spec = write_spec(
        home,
        "s3-distil",
        f"s3://{bucket}/runs",
        recipe=[{"step": "distill", "teacher": teacher, "hidden": [8], "epochs": 1}],
        promotion={"enabled": False},
    )
    code, out = finish(podium(cluster, s3, "run", str(spec)))
    assert code == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    uploaded = [k for k in s3.objects(bucket) if k.startswith("runs/teachers/")]
    assert any(k.endswith("/model.onnx") or k.endswith("/state.pt") for k in uploaded), uploaded
    assert not (home / "podium-runs" / "teachers").exists()  # nothing staged on the driver
    runs = trial_runs(store_uri(cluster), "s3-distil")
    assert len(runs) == 2
    for run in runs.values():  # distilled on the worker, from the registry's champion
        assert run.data.tags[keys.TAG_STATUS] == "completed", run.data.tags.get(keys.TAG_ERROR)
        assert run.data.tags[keys.TAG_NODE].endswith(f"/{WORKER}")
        assert run.data.params["recipe.0.teacher"] == teacher


def test_a_killed_driver_resumes_from_the_bucket_with_one_value_per_step(cluster, s3):
    nodes, home = cluster
    bucket = s3.bucket()
    epochs = 6
    spec = write_spec(
        home,
        "s3-resume",
        f"s3://{bucket}/runs",
        optimizer={"name": "adam", "lr": {"grid": [0.002, 0.004, 0.006, 0.008]}},
        training={"max_epochs": epochs, "batch_size": 8},
        search={"num_samples": 1, "scheduler": "fifo", "searcher": "grid", "max_concurrent": 2},
        promotion={"enabled": False},
    )
    first = podium(cluster, s3, "run", str(spec))

    def one_done_one_running() -> bool:
        c = newest_checkpoints(s3, bucket)
        done = [t for t, i in c.items() if i == epochs - 1]
        return len(done) >= 1 and len(c) >= 3

    wait_for(one_done_one_running, 300, "a finished trial and a running one", period=0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver's own process group: nothing else
    first.wait(timeout=30)
    before = newest_checkpoints(s3, bucket)
    assert any(i < epochs - 1 for i in before.values()), before  # killed mid-sweep

    code, out = finish(podium(cluster, s3, "run", str(spec), "--resume"))
    assert code == 0, out[-4000:]
    after = newest_checkpoints(s3, bucket)
    assert set(before) <= set(after) and len(after) == 4, (before, after, out[-4000:])
    assert all(i == epochs - 1 for i in after.values()), (after, out[-4000:])
    runs = trial_runs(store_uri(cluster), "s3-resume")
    assert len(runs) == 4
    for run in runs.values():
        assert run.data.tags[keys.TAG_STATUS] == "completed"
        assert_one_value_per_step(store_uri(cluster), run.info.run_id, epochs)
    ledger = [k for k in s3.objects(bucket) if "/podium-trials/" in k]
    assert len(ledger) == 4


def test_a_checkpoint_whose_upload_was_cut_off_is_never_promoted(cluster, s3):
    from mlflow.tracking import MlflowClient

    nodes, home = cluster
    bucket = s3.bucket()
    spec = write_spec(home, "s3-cut", f"s3://{bucket}/runs", promotion={"enabled": False})
    code, out = finish(podium(cluster, s3, "run", str(spec)))
    assert code == 0, out[-4000:]
    # The newest checkpoint of every trial is not whole, so whichever trial wins is refused.
    # One never arrived (S3 shows an object whole or not at all); the other is cut short, as a
    # store that is not atomic (a mounted bucket, a folder) can leave it.
    client = s3.client()
    cut = sorted(k for k in s3.objects(bucket) if k.endswith("/checkpoint_000001/state.pt"))
    assert len(cut) == 2
    client.delete_object(Bucket=bucket, Key=cut[0])
    whole = client.get_object(Bucket=bucket, Key=cut[1])["Body"].read()
    client.put_object(Bucket=bucket, Key=cut[1], Body=whole[: len(whole) // 2])

    code, out = finish(
        podium_local(s3, home, "promote", "s3-cut", "--tracking-uri", store_uri(cluster))
    )
    assert code == 1, out[-3000:]
    assert "not promoting trial" in out, out
    assert "is gone" in out or "is not whole (its upload was cut off)" in out, out
    # The store is the module's (the first test registered its own model): none of this sweep's.
    registry = MlflowClient(store_uri(cluster), registry_uri=store_uri(cluster))
    registered = registry.search_registered_models()
    assert "s3-cut-model" not in {m.name for m in registered}


def podium_local(s3: S3Server, home: Path, *args: str) -> subprocess.Popen:
    """A podium command that needs no Ray (promote)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "podium"), *args],
        env=user_env(s3.env()),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
