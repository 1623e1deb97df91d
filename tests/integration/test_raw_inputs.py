"""The champion answers the user's own inputs: a small sweep per built-in task (real Ray, a real
MLflow store), then the registered champion, loaded with ``mlflow.pyfunc`` from the registry,
scores the task's raw test split (scikit-learn's float64 arrays as they load, the IDX uint8
images) and reproduces the champion's logged test metric."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tests.fixtures_services import post_when_up
from tests.pg import free_port
from workers.tasks import load_task

pytestmark = pytest.mark.slow

CASES = {
    "breast_cancer": ({"arch": "mlp", "hidden": [32]}, 4, 32),
    "digits": ({"arch": "mlp", "hidden": [64]}, 3, 32),
    "diabetes": ({"arch": "mlp", "hidden": [32]}, 20, 32),
    "fashion-mnist": ({"arch": "mlp", "hidden": [64]}, 1, 256),
    "rotten-tomatoes": ({"arch": "embedding_bag", "dim": 32}, 3, 64),
}


def _champion(task: str, folder) -> tuple[str, dict[str, float]]:
    model, epochs, batch = CASES[task]
    spec = {
        "name": f"raw-{task}",
        "task": task,
        "model": model,
        "optimizer": {"name": "adam", "lr": 0.005},
        "training": {"max_epochs": epochs, "batch_size": batch},
        "search": {"num_samples": 1, "scheduler": "fifo"},
        "promotion": {"model_name": f"raw-{task}"},
    }
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = api.run(parse_spec(spec), tracking_uri=uri, verbosity=0, workdir=folder)
    assert result.promotion is not None and result.promotion.promoted
    metrics = MlflowClient(uri).get_run(result.promotion.run_id).data.metrics
    return uri, metrics


@pytest.fixture(scope="module")
def champions(tmp_path_factory):
    """Each task's champion, made once for the module's tests: ``champions(task)``."""
    made: dict[str, tuple] = {}

    def get(task: str) -> tuple:
        if task not in made:
            folder = tmp_path_factory.mktemp(task)
            made[task] = (*_champion(task, folder), folder)
        return made[task]

    return get


@pytest.mark.parametrize("task", list(CASES))
def test_the_champion_scores_the_tasks_raw_data(task, champions):
    uri, logged, _ = champions(task)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/raw-{task}@champion")
    data = load_task(task, 0)
    x, y = data.pipeline.raw_test  # the rows as the user has them: not standardised, not scaled
    if task == "rotten-tomatoes":  # review strings, as the corpus holds them
        assert isinstance(x[0], str)
        answers = pyfunc.predict(pd.DataFrame({"text": list(x)}))
        x = None
    else:
        x = x.numpy()
        assert x.dtype == (np.uint8 if task == "fashion-mnist" else np.float64)
    if x is None:
        pass
    elif data.feature_names:  # a DataFrame of pandas' default float64 columns, by name
        answers = pyfunc.predict(pd.DataFrame(x, columns=list(data.feature_names)))
    else:
        answers = pyfunc.predict(x)
    if task == "diabetes":
        prediction = np.asarray(answers["prediction"], dtype=np.float64)
        assert prediction.shape == (len(y),)  # one answer per row, in the target's units
        rmse = float(np.sqrt(np.mean((prediction - y.numpy()) ** 2)))
        assert rmse == pytest.approx(logged["test_rmse"], rel=0.02)
        assert 30 < rmse < 90  # disease-progression units: the target spans 25..346
        return
    labels, probabilities = list(answers["label"]), list(answers["probabilities"])
    assert len(labels) == len(probabilities) == len(y)
    classes = data.pipeline.answer["classes"]
    assert set(probabilities[0]) == set(classes)
    assert sum(probabilities[0].values()) == pytest.approx(1.0, abs=1e-5)
    accuracy = float(
        np.mean([label == classes[t] for label, t in zip(labels, y.tolist(), strict=True)])
    )
    assert abs(accuracy - logged["test_accuracy"]) <= 0.005
    assert accuracy > 0.7


def _serve(argv: list[str], env: dict, cwd, body: dict) -> list:
    """Start a model server, POST ``body`` once it listens, stop it; its predictions."""
    port = free_port()
    server = subprocess.Popen(
        [*argv, "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        return post_when_up(f"http://127.0.0.1:{port}/invocations", body, server)["predictions"]
    finally:
        api.stop_process_group(server)


@pytest.mark.parametrize("task", ["rotten-tomatoes", "fashion-mnist"])
def test_podium_serve_and_mlflow_models_serve_answer_raw_inputs_alike(task, champions):
    """Review strings and uint8 images as they are stored, to both servers: one answer per
    input, the labels mlflow.pyfunc gives."""
    uri, _, folder = champions(task)
    x = load_task(task, 0).pipeline.raw_test[0][:12]
    model = f"models:/raw-{task}@champion"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(model)
    if task == "rotten-tomatoes":
        body = {"inputs": [str(t) for t in x]}  # podium serve: {"inputs": ["a review", ...]}
        records = {"dataframe_records": [{"text": str(t)} for t in x]}  # MLflow's column form
        expected = list(pyfunc.predict(pd.DataFrame({"text": list(x)}))["label"])
    else:
        body = records = {"inputs": x.numpy().tolist()}  # pixels 0..255, as the IDX file holds
        expected = list(pyfunc.predict(x.numpy())["label"])
    by_podium = _serve(
        [sys.executable, "-m", "orchestrator.cli", "serve", model, "--tracking-uri", uri],
        env,
        folder,
        body,
    )
    mlflow_serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model]
    by_mlflow = _serve([*mlflow_serve, "--env-manager", "local"], env, folder, records)
    assert [a["label"] for a in by_podium] == expected
    if isinstance(by_mlflow, dict):  # a tensor request: {output: [one per input]}
        by_mlflow = [{"label": label} for label in by_mlflow["label"]]
    assert [a["label"] for a in by_mlflow] == expected
    assert len(expected) == 12 and set(by_podium[0]["probabilities"]) == set(pyfunc_classes(task))


def pyfunc_classes(task: str) -> list[str]:
    return load_task(task, 0).pipeline.answer["classes"]
