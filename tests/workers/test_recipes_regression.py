"""A compression recipe on a regression task (issue 28): every step is measured on the task's
own primary metric (RMSE on diabetes), the drop is in its units, and the numbers are the
exported artifact's (checked against ONNX Runtime run here)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tracking import keys
from workers.models import build_model
from workers.recipes import run_recipe
from workers.recipes._measure import torch_threads
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task

MLP = {"arch": "mlp", "hidden": [64, 32]}
STEPS = [
    {"step": "prune", "method": "structured", "sparsity": 0.25, "finetune_epochs": 2},
    {"step": "distill", "teacher": "trial", "hidden": [16], "epochs": 3},
    {"step": "quantize", "mode": "static", "calibration_batches": 2},
]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    data = load_task("diabetes", 0)
    with torch_threads(1):
        torch.manual_seed(0)
        model = build_model(MLP, data.input_shape, data.num_classes)
        opt, gen = make_optimizer(model, 3e-3), torch.Generator().manual_seed(0)
        for _ in range(30):
            train_epoch(model, data, opt=opt, batch_size=32, generator=gen)  # the task's MSE
        out = tmp_path_factory.mktemp("reg-recipe")
        ctx = {"workdir": out, "model_section": MLP, "latency_iters": 20}
        return run_recipe(STEPS, model.eval(), data, ctx), data


def test_each_step_of_a_regression_recipe_is_measured_on_rmse(recipe):
    res, _ = recipe
    assert [label for label, _ in res.steps] == ["0_prune", "1_distill", "2_quantize"]
    for _, measured in res.steps:
        # In the target's units (disease progression, spread ~77): the pipeline answers so.
        assert 30 < measured[keys.test_metric("rmse")] < 90
        assert keys.TEST_ACCURACY not in measured
    m = res.metrics
    assert keys.ACCURACY_DROP_PTS not in m and keys.TEST_ACCURACY not in m
    eager = m[keys.recipe_metric(keys.RECIPE_BASELINE_EAGER, "test_rmse")]
    assert m[keys.METRIC_DROP] == pytest.approx(m["test_rmse"] - eager)  # worse is positive
    assert m[keys.SIZE_RATIO] > 1  # a smaller student, then int8


def test_the_reported_rmse_is_the_registered_artifacts(recipe):
    res, data = recipe
    # The registered file takes the raw columns (float64) and answers in the target's units.
    session = ort.InferenceSession(str(res.artifacts["model.onnx"]))
    x, y = data.pipeline.raw_test
    [out] = session.run(["prediction"], {"input": x.numpy()})
    assert out.shape == (len(y),)
    rmse = float(np.sqrt(np.mean((out - y.numpy()) ** 2)))
    assert res.metrics["test_rmse"] == pytest.approx(rmse, rel=1e-5)
