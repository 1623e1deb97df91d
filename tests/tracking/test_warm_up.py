"""The model-logging warm-up (run during a sweep) pays first-use costs and writes nothing."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils import requirements_utils

from tracking.registry import warm_up_export


def test_warm_up_saves_nothing_to_the_tracking_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    # Start cold, whatever ran before in this process.
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    before = {p.name for p in tmp_path.iterdir()}
    warm_up_export()
    assert mlflow.active_run() is None
    if (tmp_path / "mlflow.db").exists():  # created by a client call: still no run may be in it
        client = MlflowClient(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(exps) == []
    assert {p.name for p in tmp_path.iterdir()} - before <= {"mlflow.db"}  # no model folder left
    # MLflow's map of installed packages (read to check requirements) is now built.
    assert requirements_utils._MODULES_TO_PACKAGES is not None
