"""A regression read through a DataLoader, compressed in a real sweep (issue 28): pruned and
static int8 (calibrated from its training Dataset), promoted under a constraint on its RMSE
drop; the registered model answers in the target's units."""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tracking import keys
from workers.tasks import load_task

pytestmark = pytest.mark.slow


def test_a_dataset_regression_is_quantized_and_promoted_under_an_rmse_drop_bound(tmp_path):
    spec = {
        "name": "houses",
        "task": "tests.workers.plugin_task:streamed_regression",
        "model": {"arch": "mlp", "hidden": [128, 128]},
        "optimizer": {"name": "adam", "lr": 0.003},
        "training": {"max_epochs": 6, "batch_size": 32},
        "search": {"num_samples": 2, "scheduler": "fifo"},
        "recipe": [
            {
                "step": "prune",
                "method": "structured",
                "sparsity": 0.5,
                "finetune_epochs": 4,
                "batch_size": 32,
            },
            {"step": "quantize", "mode": "static", "calibration_batches": 2},
        ],
        "promotion": {
            "model_name": "houses",
            "objectives": [{"metric": "test_rmse", "mode": "min"}],
            "constraints": ["metric_drop <= 0.5"],  # RMSE units: at most 0.5 worse than fp32
        },
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = api.run(parse_spec(spec), tracking_uri=uri, verbosity=0, workdir=tmp_path)
    assert result.promotion is not None and result.promotion.promoted
    run = MlflowClient(uri).get_run(result.promotion.run_id).data.metrics
    assert run[keys.METRIC_DROP] <= 0.5 and run[keys.SIZE_RATIO] > 3  # pruned, then int8
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/houses@champion")
    data = load_task(spec["task"], 0)
    x = np.stack([data.test_set[i][0].numpy() for i in range(len(data.test_set))])
    y = np.array([float(data.test_set[i][1]) for i in range(len(data.test_set))])
    prediction = np.asarray(model.predict(x)["prediction"])
    assert prediction.shape == (len(y),)
    rmse = float(np.sqrt(np.mean((prediction - y) ** 2)))
    assert rmse == pytest.approx(run["test_rmse"], rel=1e-4)  # the registered file was measured
