"""The model-logging warm-up (run during a sweep) pays first-use costs and writes nothing; logging
the champion never sets up TorchDynamo in the driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils import requirements_utils

from tracking.registry.model import warm_up_model_logging

ROOT = Path(__file__).resolve().parents[2]


def test_warm_up_saves_nothing_to_the_tracking_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    # Start cold, whatever ran before in this process.
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    before = {p.name for p in tmp_path.iterdir()}
    warm_up_model_logging()
    assert mlflow.active_run() is None
    if (tmp_path / "mlflow.db").exists():  # created by a client call: still no run may be in it
        client = MlflowClient(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        assert client.search_runs(exps) == []
    assert {p.name for p in tmp_path.iterdir()} - before <= {"mlflow.db"}  # no model folder left
    # MLflow's map of installed packages (read to check requirements) is now built.
    assert requirements_utils._MODULES_TO_PACKAGES is not None


# A fresh interpreter: the test process may have imported TorchDynamo for other tests.
_LOG_A_MODEL = """
import sys
import mlflow.pytorch, torch
from mlflow.tracking import MlflowClient
from tracking.registry.model import log_trial_model, warm_up_model_logging

uri = sys.argv[1]
warm_up_model_logging()
client = MlflowClient(uri)
run = client.create_run(client.create_experiment("e"))
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
x = torch.randn(4, 8)
log_trial_model(run.info.run_id, model.eval(), x.numpy(), uri)
loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model_torch")  # the PyTorch copy
with torch.no_grad():
    assert torch.equal(loaded(x), model(x))
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
"""


def test_logging_a_model_does_not_set_up_torchdynamo(tmp_path):
    """torch.export (MLflow's default ``pt2`` format) imports TorchDynamo: seconds of the driver's
    CPU in every sweep. The format Podium logs in reloads to the same outputs without it."""
    out = subprocess.run(
        [sys.executable, "-c", _LOG_A_MODEL, f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path,
        # This machine's environment, but no tracking URI: the script names its own store.
        env={
            **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "no dynamo"
    # MLflow's caution about pickles is for loading other people's; these are Podium's own.
    assert "Saving pytorch model by Pickle" not in out.stderr
