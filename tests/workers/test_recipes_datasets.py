"""Recipes on a task read through a DataLoader (issue 28): static int8 calibrated from batches
drawn from the training Dataset, pruning fine-tuned and a student distilled batch by batch, QAT,
every step measured on the task's own metric (here RMSE) over its whole test split."""

from __future__ import annotations

import pytest
import torch

from tracking import keys
from workers.models import build_model
from workers.recipes import run_recipe
from workers.recipes._measure import torch_threads
from workers.recipes._train import calibration_inputs, make_optimizer, train_epoch
from workers.tasks import load_task

TASK = "tests.workers.plugin_task:streamed_regression"
SECTION = {"arch": "mlp", "hidden": [32, 32]}


@pytest.fixture(scope="module")
def trained():
    data = load_task(TASK, 0)
    assert not data.in_memory
    with torch_threads(1):
        torch.manual_seed(0)
        model = build_model(SECTION, data.input_shape, data.num_classes)
        opt, gen = make_optimizer(model, 3e-3), torch.Generator().manual_seed(0)
        losses = [train_epoch(model, data, opt=opt, batch_size=32, generator=gen) for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0]  # it learnt, streaming the Dataset
    return model.eval(), data


def test_calibration_batches_are_drawn_from_the_training_dataset(trained):
    _, data = trained
    a, b = calibration_inputs(data, 100, seed=0), calibration_inputs(data, 100, seed=0)
    assert a.shape == (100, 6) and torch.equal(a, b)  # seeded: the same draw
    first = torch.stack([data.train_set[i][0] for i in range(100)])
    assert not torch.equal(a, first)  # a random draw, not the Dataset's first rows
    assert not torch.equal(a, calibration_inputs(data, 100, seed=1))


PRUNE = {"step": "prune", "method": "structured", "sparsity": 0.25, "finetune_epochs": 4}
DISTILL = {"step": "distill", "hidden": [32], "epochs": 10, "lr": 0.003}


@pytest.mark.parametrize(
    "steps",
    [
        [
            {**PRUNE, "batch_size": 32},
            {"step": "quantize", "mode": "static", "calibration_batches": 2},
        ],
        [{**DISTILL, "batch_size": 32}, {"step": "quantize", "mode": "qat", "qat_epochs": 1}],
    ],
    ids=["prune+static", "distill+qat"],
)
def test_every_step_runs_on_a_dataset_task_and_is_measured_on_rmse(trained, tmp_path, steps):
    model, data = trained
    ctx = {"workdir": tmp_path, "model_section": SECTION, "latency_iters": 10}
    with torch_threads(1):
        result = run_recipe(steps, model, data, ctx)
    m = result.metrics
    eager = m[keys.recipe_metric(keys.RECIPE_BASELINE_EAGER, "test_rmse")]
    # Measured on the 150 test rows; what compression cost is bounded as a spec would bound it.
    assert 0 < eager < 1 and 0 < m["test_rmse"] < eager + 0.5
    assert m[keys.METRIC_DROP] == pytest.approx(m["test_rmse"] - eager)
    assert m[keys.SIZE_RATIO] > 1 and keys.TEST_ACCURACY not in m
    assert result.artifacts[keys.ONNX_ARTIFACT].exists()
