"""Four sweeps started at once from one folder share the embedded store and the registry, and
nothing else: each has its own parent run and Tune folder, every step is logged once, the best
of them is champion, and none prints a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.test_faults import assert_one_value_per_step, podium
from tracking import keys

pytestmark = pytest.mark.slow
LRS = (0.0003, 0.003, 0.01, 0.05)  # different enough that their test scores differ
EPOCHS = 2


def start_sweep(folder: Path, lr: float, address: str) -> subprocess.Popen:
    args = ["run", "--address", address, "--set", "search.num_samples=1"]
    for setting in (
        f"training.max_epochs={EPOCHS}",
        f"optimizer.lr={lr}",
        "model.hidden=[32]",
        "resources.cpu=1",
    ):
        args += ["--set", setting]
    return podium(*args, env={}, cwd=folder)


def test_four_sweeps_at_once_from_one_folder(ray_cluster, tmp_path):
    folder = tmp_path / "team"
    folder.mkdir()
    procs = [start_sweep(folder, lr, ray_cluster.address) for lr in LRS]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]

    uri = f"sqlite:///{folder / 'podium-runs' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("digits-default")
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_SWEEP]
    trials = [r for r in found if r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_TRIAL]
    assert len(parents) == 4 and len(trials) == 4
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {p.info.run_id for p in parents}
    assert sorted(float(t.data.params["optimizer.lr"]) for t in trials) == sorted(LRS)
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert_one_value_per_step(uri, trial.info.run_id, EPOCHS)
    # Each sweep kept its Tune state in a folder of its own, the one its parent run names.
    tune_folders = {p.info.run_id: Path(p.data.tags[keys.TAG_RAY_PATH]) for p in parents}
    assert len(set(tune_folders.values())) == 4
    for path in tune_folders.values():
        assert path.parent == folder / "podium-runs" / "ray_results" and path.is_dir()

    # Promotions went one at a time through the lock: the best of the four is champion.
    champion = client.get_model_version_by_alias("digits-classifier", "champion")
    best = max(t.data.metrics[keys.TEST_ACCURACY] for t in trials)
    assert client.get_run(champion.run_id).data.metrics[keys.TEST_ACCURACY] == best
