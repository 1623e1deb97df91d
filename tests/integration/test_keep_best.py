"""``training.keep``: the epoch a trial ships. With ``best`` (the default) a trial that gets
worse on validation tests, registers and reports its best validation epoch; with ``last`` its
last one. Real Ray, a real MLflow store; the registered model is scored again from the registry."""

from __future__ import annotations

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tests.workers.plugin_task import drifting
from tracking import keys
from workers.tasks import prepare

pytestmark = pytest.mark.slow


def _sweep(folder, keep: str):
    spec = {
        "name": f"keep-{keep}",
        "task": "tests.workers.plugin_task:drifting",
        "model": {"arch": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.05},
        "training": {"max_epochs": 6, "batch_size": 32, "keep": keep},
        "search": {"num_samples": 1, "scheduler": "fifo"},
        "promotion": {"model_name": f"keep-{keep}"},
    }
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = api.run(parse_spec(spec), tracking_uri=uri, verbosity=0, workdir=folder)
    assert result.promotion is not None and result.promotion.promoted
    return result, uri


def _registered_test_accuracy(uri: str, name: str) -> float:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    x, y = prepare(drifting(0)).pipeline.raw_test
    labels = model.predict(x.numpy())["label"]
    return float(np.mean([label == str(t) for label, t in zip(labels, y.tolist(), strict=True)]))


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_trial_that_gets_worse_ships_the_epoch_keep_says(keep, tmp_path):
    result, uri = _sweep(tmp_path, keep)
    [row] = result.rows
    client = MlflowClient(uri)
    history = client.get_metric_history(row.run_id, keys.VAL_ACCURACY)
    per_epoch = {int(m.step): m.value for m in history}
    run = client.get_run(row.run_id).data
    best_epoch = max(range(1, 6), key=lambda e: (per_epoch[e], -e))  # epochs before the last
    if keep == "best":
        assert run.metrics[keys.KEPT_EPOCH] == best_epoch < 6
        # One number per trial: the leaderboard, the selection and MLflow read the kept epoch's.
        assert (
            row.metrics[keys.VAL_ACCURACY]
            == run.metrics[keys.VAL_ACCURACY]
            == per_epoch[best_epoch]
        )
        assert result.decision.winner.metrics[keys.VAL_ACCURACY] == per_epoch[best_epoch]
    else:
        assert keys.KEPT_EPOCH not in run.metrics
        assert row.metrics[keys.VAL_ACCURACY] == per_epoch[6] < per_epoch[best_epoch]
    # The registered model is the one whose test accuracy the trial reported.
    registered = _registered_test_accuracy(uri, f"keep-{keep}")
    assert registered == pytest.approx(run.metrics[keys.TEST_ACCURACY], abs=1e-9)
