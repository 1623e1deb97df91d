"""The registered champion is the measured model, and every MLflow loader serves it: a sweep
whose recipe quantizes to int8, then ``mlflow.pyfunc``, ``mlflow models serve`` and
``podium serve`` on the champion, fed the raw columns as scikit-learn loads them (a float64
DataFrame), each giving one answer (label and probabilities) per row, the same in all three."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tests.fixtures_services import post_when_up
from tests.pg import free_port
from tracking import keys
from workers.tasks import load_task

pytestmark = pytest.mark.slow
SPEC = {
    "name": "it-loaders",
    "task": "breast_cancer",
    "model": {"arch": "mlp", "hidden": [32]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"max_epochs": 4, "batch_size": 32},
    "search": {"num_samples": 2, "scheduler": "fifo"},
    "recipe": [{"step": "quantize", "mode": "dynamic"}],
    "promotion": {"model_name": "it-loaders-model"},
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loaders")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = api.run(parse_spec(SPEC), tracking_uri=uri, verbosity=0, workdir=folder)
    assert result.promotion is not None and result.promotion.promoted
    data = load_task("breast_cancer", 0)
    raw = data.pipeline.raw_test[0][:20].numpy()  # as load_breast_cancer() gives them
    rows = pd.DataFrame(raw, columns=list(data.feature_names))
    return folder, uri, result, rows


def _answers(predictions) -> list[tuple[str, float]]:
    """Each row's (label, probability of 'benign'), whatever form the loader answers in."""
    if isinstance(predictions, pd.DataFrame):
        predictions = predictions.to_dict(orient="records")
    return [(p["label"], float(p["probabilities"]["benign"])) for p in predictions]


def test_the_registered_model_is_the_measured_int8_onnx_file(champion):
    folder, uri, result, rows = champion
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/it-loaders-model@champion"))
    served = onnx.load(str(local / "model.onnx"))
    int8 = [t.name for t in served.graph.initializer if t.data_type in (2, 3)]  # UINT8, INT8
    assert int8, "the registered ONNX file is not quantized"
    # The very file the trial measured: same outputs as its checkpoint's copy.
    winner = result.decision.winner.trial_id
    [measured] = (folder / "podium-runs" / "ray_results").rglob(
        f"*{winner}*/checkpoint_*/artifacts/model.onnx"
    )
    x = rows.to_numpy()
    a, b = (
        ort.InferenceSession(str(p)).run(None, {"input": x})
        for p in (local / "model.onnx", measured)
    )
    assert list(a[0]) == list(b[0]) and a[1] == b[1]  # labels, then probabilities
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("it-loaders-model", "champion")
    assert "recipe (quantize)" in version.tags[keys.TAG_MEASURED]
    # Beside it, the weights a weights-only load rebuilds; no PyTorch flavor (another model).
    assert {keys.STATE_DICT_ARTIFACT, keys.ARCH_ARTIFACT} <= {p.name for p in local.rglob("*")}
    assert not any(
        a.path == keys.TORCH_MODEL_ARTIFACT for a in client.list_artifacts(version.run_id)
    )


def test_pyfunc_mlflow_models_serve_and_podium_serve_agree(champion, tmp_path):
    folder, uri, _, rows = champion
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/it-loaders-model@champion")
    # Named columns: the signature lists them, and a request in another order means the same.
    assert pyfunc.metadata.get_input_schema().input_names()[:2] == ["mean radius", "mean texture"]
    # pandas' float64 columns, as a user's DataFrame has them: no cast by hand.
    assert rows.dtypes.unique().tolist() == [np.float64]
    by_pyfunc = _answers(pyfunc.predict(rows))
    shuffled = rows[list(reversed(rows.columns))]
    assert _answers(pyfunc.predict(shuffled)) == by_pyfunc
    assert {label for label, _ in by_pyfunc} <= {"malignant", "benign"}

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    # As from an activated virtualenv: mlflow models serve execs uvicorn from PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    split = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    port = free_port()
    mlflow_serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/it-loaders-model@champion",
        ]
        + ["-p", str(port), "--env-manager", "local", "--host", "127.0.0.1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        by_mlflow = _answers(
            post_when_up(f"http://127.0.0.1:{port}/invocations", split, mlflow_serve)["predictions"]
        )
    finally:
        api.stop_process_group(mlflow_serve)
    port = free_port()
    podium = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "models:/it-loaders-model@champion"]
        + ["--port", str(port), "--tracking-uri", uri],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        by_podium = _answers(
            post_when_up(f"http://127.0.0.1:{port}/invocations", split, podium)["predictions"]
        )
    finally:
        podium.terminate()
        podium.wait(timeout=30)
    assert len(by_pyfunc) == len(by_mlflow) == len(by_podium) == 20  # one answer per row
    for answers in (by_mlflow, by_podium):
        assert [label for label, _ in answers] == [label for label, _ in by_pyfunc]
        assert np.allclose([p for _, p in answers], [p for _, p in by_pyfunc], atol=1e-5)
