"""int8 quantization with ONNX Runtime on a real Fashion-MNIST model: outputs stay close to fp32,
the file is about 4x smaller; TorchScript export works where asked."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tracking import keys
from workers.models import build_model
from workers.recipes import run_recipe
from workers.recipes._export import export_onnx
from workers.recipes._measure import onnx_predict, onnx_session, torch_threads
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe it."""
    with torch_threads(1):
        yield


SECTION = {"arch": "mlp", "hidden": [256, 128], "batch_norm": False, "dropout": 0.0}


@pytest.fixture(scope="module")
def fashion():
    """A 784-256-128-10 MLP trained briefly on 3,000 Fashion-MNIST images (tested on 2,000)."""
    full = load_task("fashion-mnist", 0)
    data = dataclasses.replace(
        full,
        x_train=full.x_train[:3000],
        y_train=full.y_train[:3000],
        x_test=full.x_test[:2000],
        y_test=full.y_test[:2000],
    )
    torch.manual_seed(0)
    model = build_model(SECTION, data.input_shape, data.num_classes)
    opt, gen = make_optimizer(model, 1e-3), torch.Generator().manual_seed(0)
    for _ in range(2):
        train_epoch(model, data, opt=opt, batch_size=64, generator=gen)
    return model.eval(), data


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_stays_close_to_fp32_and_is_four_times_smaller(fashion, tmp_path, mode):
    model, data = fashion
    steps = [{"step": "quantize", "mode": mode, "calibration_batches": 8}]
    result = run_recipe(steps, model, data, {"workdir": tmp_path, "latency_iters": 50})
    m = result.metrics

    fp32_path = export_onnx(model, data.input_shape, tmp_path / "fp32" / "model.onnx")
    x = data.x_test.numpy()
    fp32 = onnx_predict(onnx_session(fp32_path), x)
    int8 = onnx_predict(onnx_session(result.artifacts[keys.ONNX_ARTIFACT]), x)
    with torch.inference_mode():
        eager = model(data.x_test).numpy()
    np.testing.assert_allclose(fp32, eager, atol=1e-4)  # the export itself is exact
    # int8 logits: typically within 1% of fp32's logit range, 99% of them within 5% (static mode
    # clips the rare activation beyond its calibrated range), and the same class almost always.
    scale, err = float(fp32.max() - fp32.min()), np.abs(int8 - fp32)
    assert float(err.mean()) <= 0.01 * scale
    assert float(np.quantile(err, 0.99)) <= 0.05 * scale
    assert float((int8.argmax(1) == fp32.argmax(1)).mean()) >= 0.98
    assert abs(m[keys.ACCURACY_DROP_PTS]) <= 1.0
    # 235k float32 weights -> int8: about 4x (scales, zero points and graph overhead cost a little).
    assert 3.5 <= m[keys.SIZE_RATIO] <= 4.1
    assert m[keys.MODEL_SIZE_BYTES] == result.artifacts[keys.ONNX_ARTIFACT].stat().st_size


def test_torchscript_export_is_an_extra_artifact_that_matches(fashion, tmp_path):
    model, data = fashion
    steps = [{"step": "export", "format": "both"}]
    result = run_recipe(steps, model, data, {"workdir": tmp_path, "latency_iters": 20})
    ts = torch.jit.load(str(result.artifacts[keys.TORCHSCRIPT_ARTIFACT]))
    with torch.inference_mode():
        torch.testing.assert_close(ts(data.x_test[:64]), model(data.x_test[:64]))
    # An fp32 export alone compresses nothing: size ratio 1 against the same fp32 ONNX baseline.
    assert result.metrics[keys.SIZE_RATIO] == pytest.approx(1.0, abs=0.01)
    assert result.metrics[keys.ACCURACY_DROP_PTS] == pytest.approx(0.0, abs=0.1)
