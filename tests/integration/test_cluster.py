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

from orchestrator.runner import run_experiment
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
