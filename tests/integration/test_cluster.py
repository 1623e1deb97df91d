"""Sweeps on an existing multi-node Ray cluster, simulated on this machine.

``ray.cluster_utils.Cluster`` starts real Ray nodes (each its own raylet) in this process's
session: a head, a CPU worker, a "GPU node" advertising one GPU and a "TPU node" advertising
the ``TPU`` resource. Ray really places trials by those resources; the GPU and TPU are fake, so
the device picker must fall back to the CPU and record why. Podium joins the cluster through
``address`` exactly as it would join a real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.execution.runner import run_experiment
from orchestrator.spec import parse_spec
from tracking import keys

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(ray_cluster):
    """The session's simulated cluster (tests/fixtures_services.py): head without trial CPUs,
    worker-1, gpu-node (1 fake GPU), tpu-node (2 fake TPU chips); one CPU per worker node."""
    return ray_cluster


def tiny_spec(name: str, storage: Path, amp: bool = False, **resources: float) -> object:
    return parse_spec(
        {
            "name": name,
            "task": "digits",
            "model": {"arch": "mlp", "hidden": [16]},
            "optimizer": {"name": "adam", "lr": {"choice": [0.01, 0.02]}},
            "training": {"max_epochs": 2, "batch_size": 128, "amp": amp},
            "search": {"num_samples": 2, "scheduler": "fifo"},
            "resources": {"cpu": 1, **resources},
            "cluster": {"storage_path": str(storage)},
            "promotion": {"enabled": False},
        }
    )


def child_tags(uri: str, result) -> list[dict[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return [client.get_run(row.run_id).data.tags for row in result.rows]


def sweep(cluster, tmp_path: Path, name: str, amp: bool = False, **resources: float):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "shared-storage"
    result = run_experiment(
        tiny_spec(name, storage, amp, **resources),
        tracking_uri=uri,
        address=cluster.address,
        verbosity=0,
        workdir=tmp_path,
    )
    assert [r.status for r in result.rows] == ["completed", "completed"], result.rows
    return uri, storage, result


def test_gpu_trials_land_on_the_gpu_node_and_fall_back_to_cpu_with_the_reason(cluster, tmp_path):
    uri, storage, result = sweep(cluster, tmp_path, "on-gpu", amp=True, gpu=0.5)
    for tags in child_tags(uri, result):
        assert tags[keys.TAG_NODE].endswith("/gpu-node")
        assert tags[keys.TAG_DEVICE] == "cpu"  # this torch has no CUDA ...
        reason = tags[keys.TAG_DEVICE_REASON]  # ... and the run says so, amp knob included
        assert "assigned 0.5 GPU" in reason and "amp off" in reason
    # Checkpoints went to the shared storage path, one trial folder per trial.
    checkpoints = list(storage.rglob("checkpoint_*"))
    assert len({c.parent for c in checkpoints}) == 2


def test_tpu_trials_land_on_the_tpu_node(cluster, tmp_path):
    uri, _, result = sweep(cluster, tmp_path, "on-tpu", tpu=1)
    for tags in child_tags(uri, result):
        assert tags[keys.TAG_NODE].endswith("/tpu-node")
        assert tags[keys.TAG_DEVICE] == "cpu"
        assert "torch_xla" in tags[keys.TAG_DEVICE_REASON]


def test_cpu_trials_run_anywhere_on_the_cluster(cluster, tmp_path):
    uri, _, result = sweep(cluster, tmp_path, "on-cpu")
    for tags in child_tags(uri, result):
        assert tags[keys.TAG_NODE].rsplit("/", 1)[-1] in {"worker-1", "gpu-node", "tpu-node"}
        assert tags[keys.TAG_DEVICE_REASON] == "no accelerator assigned"


@pytest.fixture
def barrier(cluster):
    """A named actor the trials of ``plugin_task:packed`` wait at; it answers how many arrived
    before it let them go (all four, or whoever came within its time)."""
    import ray

    from tests.workers.plugin_task import PACKING_BARRIER

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self, expected: int) -> None:
            self.expected, self.arrived = expected, 0

        async def arrive(self) -> tuple[int, int]:
            import asyncio
            import time

            self.arrived += 1
            deadline = time.monotonic() + 120
            while self.arrived < self.expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return self.arrived, self.expected

    name, namespace = PACKING_BARRIER
    ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
    actor = Barrier.options(name=name, namespace=namespace, lifetime="detached").remote(4)
    ray.get(actor.__ray_ready__.remote())
    ray.shutdown()  # run_experiment joins the cluster itself, as a user's driver would
    yield
    ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
    ray.kill(ray.get_actor(name, namespace=namespace))
    ray.shutdown()


def test_quarter_gpus_pack_four_trials_onto_the_one_gpu_at_once(cluster, barrier, tmp_path):
    # gpu-node has one (fake) GPU and one CPU: a quarter of each per trial fits four there, and
    # only there. Each trial waits at the barrier for the other three, so all four completing
    # means Ray ran them side by side.
    spec = parse_spec(
        {
            "name": "packed",
            "task": "tests.workers.plugin_task:packed",
            "model": {"arch": "mlp", "hidden": [8]},
            "optimizer": {"name": "adam", "lr": {"grid": [0.01, 0.02, 0.03, 0.04]}},
            "training": {"max_epochs": 1, "batch_size": 64},
            "search": {"num_samples": 1, "scheduler": "fifo", "searcher": "grid"},
            "resources": {"cpu": 0.25, "gpu": 0.25},
            "cluster": {"storage_path": str(tmp_path / "shared-storage")},
            "promotion": {"enabled": False},
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_experiment(
        spec, tracking_uri=uri, address=cluster.address, verbosity=0, workdir=tmp_path
    )
    assert [r.status for r in result.rows] == ["completed"] * 4, result.rows
    for tags in child_tags(uri, result):
        assert tags[keys.TAG_NODE].endswith("/gpu-node")
        assert "assigned 0.25 GPU" in tags[keys.TAG_DEVICE_REASON]


def test_gpu_auto_on_a_node_without_cuda_asks_for_a_whole_gpu(cluster, tmp_path):
    # The probes ran on gpu-node, whose torch has no CUDA: the card's size is unknown, so auto
    # asks what gpu: 1 would (tests/orchestrator/test_resources.py checks the reason).
    uri, _, result = sweep(cluster, tmp_path, "auto", gpu="auto")
    for tags in child_tags(uri, result):
        assert tags[keys.TAG_NODE].endswith("/gpu-node")
        assert "assigned 1 GPU" in tags[keys.TAG_DEVICE_REASON]
