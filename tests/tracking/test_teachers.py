"""Registry teachers: a recipe's int8 ONNX model registered in a real MLflow registry (SQLite
store) round-trips, resolves (or fails clearly) before any trial would start, and is fetched as
the file the recipe wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tracking import keys
from tracking.teachers import check_teacher, fetch_teacher, fetch_teachers
from workers.models import build_model
from workers.recipes import run_recipe
from workers.recipes._distill import teacher_file, teacher_logits
from workers.recipes._measure import onnx_session, torch_threads
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task

pytestmark = pytest.mark.slow  # a real SQLite-backed MLflow store takes seconds to create

SECTION = {"arch": "mlp", "hidden": [64], "batch_norm": False, "dropout": 0.0}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A digits model, int8-quantized by a recipe, registered as quant-digits@champion."""
    import mlflow
    import mlflow.onnx
    import onnx

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data = load_task("digits", 0)
    with torch_threads(1):
        torch.manual_seed(0)
        model = build_model(SECTION, data.input_shape, data.num_classes)
        opt, gen = make_optimizer(model, 2e-3), torch.Generator().manual_seed(0)
        for _ in range(5):
            train_epoch(model, data, opt=opt, batch_size=64, generator=gen)
        result = run_recipe(
            [{"step": "quantize", "mode": "dynamic"}],
            model.eval(),
            data,
            {"workdir": root / "out", "latency_iters": 20},
        )
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("quant", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_registry_uri(uri)
    onnx_file = result.artifacts[keys.ONNX_ARTIFACT]
    with mlflow.start_run(experiment_id=exp):
        # Plain MLflow, as a team would publish a compressed model as its own registered model.
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_file)),
            name="onnx_model",
            save_as_external_data=False,
            registered_model_name="quant-digits",
        )
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = str(info.registered_model_version)
    client.set_registered_model_alias("quant-digits", "champion", version)
    return uri, version, onnx_file, data, root


def test_quantized_model_round_trips_through_the_registry(registered, tmp_path):
    import mlflow.onnx
    import mlflow.pyfunc

    uri, version, onnx_file, data, _ = registered
    assert version == "1"
    # The recipe's file is the whole pipeline: digits' raw pixels (float64, 0..16) in.
    x = data.pipeline.raw_test[0].numpy()
    assert x.dtype == np.float64 and x.max() == 16
    expected = onnx_session(onnx_file).run(["label"], {"input": x})[0]
    # Back through the registry alias, three ways: ONNX Runtime, the onnx flavor, pyfunc.
    folder = fetch_teacher("models:/quant-digits@champion", uri, tmp_path)
    session = onnx_session(teacher_file(folder))
    np.testing.assert_array_equal(session.run(["label"], {"input": x})[0], expected)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # an earlier test may have pointed it at its own store
    proto = mlflow.onnx.load_model("models:/quant-digits@champion")
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in proto.graph.node)
    pyfunc = mlflow.pyfunc.load_model("models:/quant-digits/1")
    # Dynamic int8 scales activations per batch, so compare the same batch.
    out = pyfunc.predict({"input": x[:32]})
    same_batch = onnx_session(onnx_file).run(None, {"input": x[:32]})
    assert list(out["label"]) == list(same_batch[0])
    for a, b in zip(out["probabilities"], same_batch[1], strict=True):
        assert a.keys() == b.keys() and np.allclose(list(a.values()), list(b.values()), atol=1e-5)


def test_teacher_uris_are_checked_without_downloading(registered):
    uri, *_ = registered
    assert check_teacher("models:/quant-digits@champion", uri) is None
    assert check_teacher("models:/quant-digits/1", uri) is None
    for bad in (
        "models:/quant-digits@nope",
        "models:/no-such-model@champion",
        "models:/quant-digits/7",
    ):
        msg = check_teacher(bad, uri)
        assert msg is not None and bad in msg


def test_fetched_teacher_is_the_registered_model(registered, tmp_path):
    uri, _, onnx_file, data, _ = registered
    teachers = fetch_teachers(["models:/quant-digits@champion"] * 2, uri, tmp_path)
    assert list(teachers) == ["models:/quant-digits@champion"]  # fetched once
    path = teacher_file(Path(teachers["models:/quant-digits@champion"]))
    assert path.suffix == ".onnx"
    torch.testing.assert_close(
        teacher_logits(path, data.x_test), teacher_logits(onnx_file, data.x_test)
    )
