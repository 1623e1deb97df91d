"""The prune step on real trained models: structured pruning really shrinks the model and its
file; unstructured sparsity is reported as it is (fewer non-zeros, same file)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tracking import keys
from workers.models import build_model
from workers.recipes import run_recipe
from workers.recipes._measure import model_session, onnx_predict, torch_threads
from workers.recipes._prune import _ramp, magnitude_masks, shrink
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe it."""
    with torch_threads(1):
        yield


MLP = {"arch": "mlp", "hidden": [128, 64], "batch_norm": False, "dropout": 0.0}


def _trained(section: dict, epochs: int = 12):
    data = load_task("digits", 0)
    torch.manual_seed(0)
    model = build_model(section, data.input_shape, data.num_classes)
    opt, gen = make_optimizer(model, 2e-3), torch.Generator().manual_seed(0)
    for _ in range(epochs):
        train_epoch(model, data, opt=opt, batch_size=64, generator=gen)
    return model.eval(), data


@pytest.fixture(scope="module")
def mlp():
    return _trained(MLP)


def _mlp_params(widths: list[int], n_in: int = 64, n_out: int = 10) -> int:
    dims = [n_in, *widths, n_out]
    return sum(a * b + b for a, b in zip(dims, dims[1:], strict=False))


def test_structured_prune_rebuilds_a_smaller_model_with_a_smaller_file(mlp, tmp_path):
    model, data = mlp
    steps = [{"step": "prune", "method": "structured", "sparsity": 0.5, "finetune_epochs": 3}]
    ctx = {"workdir": tmp_path, "model_section": MLP, "latency_iters": 50}
    result = run_recipe(steps, model, data, ctx)
    m = result.metrics

    # Half the neurons of each hidden layer are gone, and the model says so.
    assert result.model_section["hidden"] == [64, 32]
    assert m[keys.PARAM_COUNT] == _mlp_params([64, 32])
    assert m[keys.recipe_metric("baseline_eager", keys.PARAM_COUNT)] == _mlp_params([128, 64])
    # The exported file shrinks by the parameter fraction (float32 weights dominate the file).
    expected = _mlp_params([128, 64]) / _mlp_params([64, 32])
    assert m[keys.SIZE_RATIO] == pytest.approx(expected, rel=0.1)
    # The pruned ONNX model runs and, after fine-tuning, still classifies digits well.
    onnx.checker.check_model(str(result.artifacts[keys.ONNX_ARTIFACT]))
    assert m[keys.TEST_ACCURACY] >= 0.9
    assert m[keys.ACCURACY_DROP_PTS] <= 6.0


def test_structured_shrink_is_exact_when_the_removed_channels_are_dead():
    """Removing channels whose output is exactly zero must not change the function at all: this
    checks the slicing of the next conv, of BatchNorm, and of the Linear after Flatten."""
    section = {"arch": "cnn", "channels": [8, 6], "hidden": [12], "batch_norm": True}
    torch.manual_seed(0)
    model = build_model(section, (1, 8, 8), 10).eval()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    norms = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:  # non-trivial running statistics and affine parameters
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        for conv, bn, dead in zip(convs, norms, ([1, 4], [0, 5]), strict=True):
            conv.weight[dead] = 0.0
            conv.bias[dead] = 0.0
            bn.running_mean[dead] = 0.0
            bn.bias[dead] = 0.0
    small = shrink(model, [6, 4, 12])
    small_convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in small_convs] == [6, 4]
    assert small_convs[1].in_channels == 6
    x = torch.rand(32, 1, 8, 8)
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_unstructured_sparsity_is_reported_honestly(mlp, tmp_path):
    model, data = mlp
    steps = [{"step": "prune", "method": "l1_unstructured", "sparsity": 0.8, "finetune_epochs": 2}]
    result = run_recipe(steps, model, data, {"workdir": tmp_path, "latency_iters": 50})
    m = result.metrics
    weights = [mod.weight for mod in result.model if isinstance(mod, nn.Linear)]
    n_weights = sum(w.numel() for w in weights)
    n_bias = m[keys.PARAM_COUNT] - n_weights
    # Every layer keeps exactly 20% of its weights, even after fine-tuning (masks re-applied).
    for w in weights:
        assert int(torch.count_nonzero(w)) == w.numel() - round(0.8 * w.numel())
    assert m[keys.NONZERO_PARAMS] <= 0.2 * n_weights + n_bias + 1
    assert m[keys.PARAM_COUNT] == _mlp_params([128, 64])  # nothing removed
    # A dense ONNX file stores the zeros: no size gain, and none is claimed.
    assert m[keys.SIZE_RATIO] == pytest.approx(1.0, abs=0.02)
    assert m[keys.TEST_ACCURACY] >= 0.85


def test_global_magnitude_uses_one_threshold_across_layers(mlp):
    model, _ = mlp
    masks = magnitude_masks(model, 0.8, per_layer=False)
    kept = torch.cat([m.flatten() for m in masks.values()])
    assert int(kept.sum()) == kept.numel() - round(0.8 * kept.numel())
    # Every kept weight is at least as large as every pruned one, across all layers.
    mags = torch.cat([w.detach().abs().flatten() for w in masks])
    assert mags[kept == 1].min() >= mags[kept == 0].max()
    per_layer = [float(m.mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # layers are pruned unevenly, unlike l1


def test_gradual_schedule_ramps_to_the_target(mlp, tmp_path):
    ramp = _ramp(0.75, 4)
    assert ramp == sorted(ramp) and ramp[-1] == pytest.approx(0.75) and ramp[0] > 0.75 / 4
    model, data = mlp
    steps = [
        {
            "step": "prune",
            "method": "structured",
            "sparsity": 0.75,
            "schedule": "gradual",
            "prune_epochs": 3,
            "finetune_epochs": 1,
        }
    ]
    result = run_recipe(
        steps, model, data, {"workdir": tmp_path, "model_section": MLP, "latency_iters": 20}
    )
    assert result.model_section["hidden"] == [32, 16]
    session = model_session(result.artifacts[keys.ONNX_ARTIFACT])
    logits = onnx_predict(session, data.x_test.numpy())
    assert logits.shape == (len(data.x_test), 10)
    assert float((logits.argmax(1) == data.y_test.numpy()).mean()) == pytest.approx(
        result.metrics[keys.TEST_ACCURACY]
    )
    assert np.isfinite(logits).all()
