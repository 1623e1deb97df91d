"""One real sweep through the public API that trains with every optimizer in the catalogue,
with a learning-rate schedule and adversarial training on, and records every trial in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.execution.runner import run_experiment
from orchestrator.spec import parse_spec
from tracking import keys
from workers.optimizers import OPTIMIZERS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_every_optimizer_trains_digits_in_one_sweep(local_ray, tmp_path: Path):
    names = OPTIMIZERS.names()
    spec = parse_spec(
        {
            "name": "every-optimizer",
            "task": "digits",
            "model": {"arch": "mlp", "hidden": [32]},
            # A grid of whole sections: one trial per optimizer, each with its registry defaults.
            "optimizer": {"grid": [{"name": n} for n in names]},
            "training": {
                "max_epochs": 2,
                "seed": 0,
                "lr_schedule": {"name": "cosine", "warmup_epochs": 1},
                "adversarial": {"attack": "fgsm", "epsilon": 0.1, "eval_steps": 3},
            },
            "search": {"num_samples": 1, "scheduler": "fifo", "searcher": "grid"},
            "resources": {"cpu": 1},
            "cluster": {"storage_path": str(tmp_path / "ray")},
            "promotion": {"enabled": False},
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_experiment(spec, tracking_uri=uri, verbosity=0, workdir=tmp_path)

    assert sorted(r.params["optimizer.name"] for r in result.rows) == names
    assert [r for r in result.rows if r.status != "completed"] == []
    for row in result.rows:
        assert 0.0 <= row.metrics[keys.TEST_ROBUST_ACCURACY] <= row.metrics[keys.TEST_ACCURACY]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = [client.get_run(r.run_id) for r in result.rows]
    assert sorted(run.data.params["optimizer.name"] for run in runs) == names
    for run in runs:  # per-epoch robust accuracy (on val) was logged for each epoch
        history = client.get_metric_history(run.info.run_id, keys.ROBUST_ACCURACY)
        assert [m.step for m in history] == [1, 2]
