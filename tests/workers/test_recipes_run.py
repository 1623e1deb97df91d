"""A whole recipe (structured prune → static int8 → export) on digits: per-step metrics show where
each gain came from, the final metrics are the last step's, artifacts are written; quantization-
aware training after pruning folds BatchNorm and still rebuilds; invalid recipes fail spec
validation before anything starts."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator.errors import SpecError
from orchestrator.spec import parse_spec
from tracking import keys
from workers.errors import WorkerError
from workers.models import build_model
from workers.recipes import check_recipe, registry_teachers, run_recipe
from workers.recipes._distill import load_torch_teacher
from workers.recipes._measure import torch_threads
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import load_task

MLP = {"arch": "mlp", "hidden": [128, 64], "batch_norm": True, "dropout": 0.0}
STEPS = [
    {"step": "prune", "method": "structured", "sparsity": 0.5, "finetune_epochs": 3},
    {"step": "quantize", "mode": "static", "calibration_batches": 4},
    {"step": "export", "format": "onnx"},
]


@pytest.fixture(scope="module")
def trained():
    """The MLP (with BatchNorm) trained 10 epochs on digits."""
    data = load_task("digits", 0)
    with torch_threads(1):
        torch.manual_seed(0)
        model = build_model(MLP, data.input_shape, data.num_classes)
        opt, gen = make_optimizer(model, 2e-3), torch.Generator().manual_seed(0)
        for _ in range(10):
            train_epoch(model, data, opt=opt, batch_size=64, generator=gen)
    return model.eval(), data


@pytest.fixture(scope="module")
def result(trained, tmp_path_factory):
    model, data = trained
    with torch_threads(1):
        out = tmp_path_factory.mktemp("recipe")
        ctx = {"workdir": out, "model_section": MLP, "latency_iters": 50}
        return run_recipe(STEPS, model, data, ctx), data


def test_every_step_is_measured_and_chained(result):
    res, _ = result
    m = res.metrics
    labels = [label for label, _ in res.steps]
    assert labels == ["0_prune", "1_quantize", "2_export"]
    for label, _ in res.steps:
        for metric in (
            keys.TEST_ACCURACY,
            keys.TEST_ACCURACY_BEFORE,
            keys.MODEL_SIZE_BYTES,
            keys.LATENCY_MS_P50,
            keys.LATENCY_MS_P95,
            keys.THROUGHPUT_SPS,
            keys.PARAM_COUNT,
            keys.NONZERO_PARAMS,
        ):
            assert keys.recipe_metric(label, metric) in m
    # Accuracy before a step is the accuracy after the previous one (the baseline for the first).
    before = m[keys.recipe_metric("baseline_eager", keys.TEST_ACCURACY)]
    for _label, step in res.steps:
        assert step[keys.TEST_ACCURACY_BEFORE] == before
        before = step[keys.TEST_ACCURACY]
    # Where the gains came from: pruning shrinks params, int8 shrinks bytes per param.
    prune_size = m["recipe.0_prune.model_size_bytes"]
    assert m["recipe.0_prune.param_count"] < 0.5 * m["recipe.baseline_eager.param_count"]
    # The file is the whole pipeline: its front and answer (~1 KB) are not quantized.
    assert m["recipe.1_quantize.model_size_bytes"] < 0.55 * prune_size
    assert m["recipe.1_quantize.param_count"] == m["recipe.0_prune.param_count"]


def test_final_metrics_are_the_artifacts_and_ratios_follow_from_them(result):
    res, _ = result
    m = res.metrics
    last = res.steps[-1][1]
    for metric in (keys.TEST_ACCURACY, keys.MODEL_SIZE_BYTES, keys.LATENCY_MS_P50):
        assert m[metric] == last[metric]
    onnx_fp32 = m[keys.recipe_metric("baseline_onnx", keys.MODEL_SIZE_BYTES)]
    eager_p50 = m[keys.recipe_metric("baseline_eager", keys.LATENCY_MS_P50)]
    assert m[keys.SIZE_RATIO] == pytest.approx(onnx_fp32 / m[keys.MODEL_SIZE_BYTES])
    assert m[keys.SPEEDUP] == pytest.approx(eager_p50 / m[keys.LATENCY_MS_P50])
    assert m[keys.SIZE_RATIO] > 4  # half the units and int8
    assert m[keys.LATENCY_MS_P95] >= m[keys.LATENCY_MS_P50] > 0
    assert all(isinstance(v, float) for v in m.values())
    assert m[keys.MEASURE_THREADS] == 1.0 and res.tags[keys.CPU_MODEL]


def test_artifacts_describe_and_rebuild_the_compressed_model(result):
    res, data = result
    assert set(res.artifacts) == {keys.ONNX_ARTIFACT, keys.RECIPE_ARTIFACT, "model_fp32.pt"}
    card = json.loads(res.artifacts[keys.RECIPE_ARTIFACT].read_text())
    assert card["model"]["hidden"] == [64, 32] and card["quantize"]["mode"] == "static"
    # The fp32 file is the teacher format: weights-only, rebuilt from its own arch section.
    rebuilt = load_torch_teacher(res.artifacts["model_fp32.pt"])
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(data.x_test), res.model(data.x_test))


def test_qat_after_pruning_folds_batch_norm_and_still_rebuilds(trained, tmp_path):
    model, data = trained
    steps = [
        {"step": "prune", "method": "structured", "sparsity": 0.5, "finetune_epochs": 2},
        {"step": "quantize", "mode": "qat", "qat_epochs": 2, "calibration_batches": 4},
    ]
    ctx = {"workdir": tmp_path, "model_section": MLP, "latency_iters": 20}
    with torch_threads(1):
        res = run_recipe(steps, model, data, ctx)
    m = res.metrics
    assert [label for label, _ in res.steps] == ["0_prune", "1_quantize"]
    assert m["recipe.1_quantize.test_accuracy_before"] == m["recipe.0_prune.test_accuracy"]
    assert m[keys.TEST_ACCURACY] >= m["recipe.baseline_eager.test_accuracy"] - 0.03
    assert m["recipe.1_quantize.model_size_bytes"] < 0.5 * m["recipe.0_prune.model_size_bytes"]
    # BatchNorm now lives in the weights of the Linear before it; the card and the fp32 file
    # describe that model, and the learned activation ranges travel in the card.
    assert not any(isinstance(layer, torch.nn.BatchNorm1d) for layer in res.model)
    card = json.loads(res.artifacts[keys.RECIPE_ARTIFACT].read_text())
    assert card["model"]["batch_norm"] is False and card["model"]["hidden"] == [64, 32]
    assert {"0", "output"} <= set(card["quantize"]["activation_qparams"])
    rebuilt = load_torch_teacher(res.artifacts["model_fp32.pt"])
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(data.x_test), res.model(data.x_test))


def test_qat_must_come_after_every_step_that_replaces_the_model(trained, tmp_path):
    qat = {"step": "quantize", "mode": "qat"}
    problems = check_recipe([qat, {"step": "export"}, {"step": "prune", "sparsity": 0.3}])
    assert [(p, v) for p, v, _ in problems] == [("[2].step", "prune")]
    assert "after quantize mode 'qat' (recipe[0])" in problems[0][2]
    assert check_recipe([{"step": "distill"}, qat]) == []
    assert check_recipe([qat, {"step": "quantize", "mode": "static"}, {"step": "prune"}]) == []
    model, data = trained
    with pytest.raises(WorkerError, match="recipe\\[1\\].step: 'distill' after quantize"):
        run_recipe([qat, {"step": "distill"}], model, data, {"workdir": tmp_path})
    assert list(tmp_path.iterdir()) == []  # refused before anything ran


def test_no_steps_returns_none_and_bad_steps_raise(tmp_path):
    data = load_task("digits", 0)
    model = build_model(MLP, data.input_shape, data.num_classes)
    assert run_recipe([], model, data, {"workdir": tmp_path}) is None
    with pytest.raises(WorkerError, match="recipe\\[0\\].sparsity"):
        run_recipe([{"step": "prune", "sparsity": 1.0}], model, data, {"workdir": tmp_path})


def _spec(recipe):
    return {"name": "t", "recipe": recipe}


@pytest.mark.parametrize(
    ("recipe", "path", "value"),
    [
        ([{"step": "prunee"}], "recipe[0].step", "prunee"),
        ([{"step": "prune", "sparsity": 1.0}], "recipe[0].sparsity", 1.0),
        ([{"step": "prune", "sparsity": -0.1}], "recipe[0].sparsity", -0.1),
        (
            [{"step": "quantize"}, {"step": "prune", "sparsity": {"choice": [0.5, 1.5]}}],
            "recipe[1].sparsity",
            1.5,
        ),
        ([{"step": "prune", "method": "l2"}], "recipe[0].method", "l2"),
        ([{"step": "quantize", "mode": "int4"}], "recipe[0].mode", "int4"),
        ([{"step": "quantize", "mode": "qat", "qat_epochs": 0}], "recipe[0].qat_epochs", 0),
        ([{"step": "distill", "teacher": "champion"}], "recipe[0].teacher", "champion"),
        ([{"step": "distill", "hidden": {"choice": [[16], [0]]}}], "recipe[0].hidden", [0]),
        (
            {"choice": [[{"step": "quantize"}], [{"step": "export", "format": "tflite"}]]},
            "recipe[1][0].format",
            "tflite",
        ),
    ],
)
def test_bad_recipes_fail_spec_validation(recipe, path, value):
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(recipe))
    assert (path, value) in [(p.path, p.value) for p in err.value.problems], err.value


def test_good_recipes_with_search_spaces_validate():
    spec = parse_spec(
        _spec(
            {
                "choice": [
                    [
                        {
                            "step": "prune",
                            "method": "structured",
                            "sparsity": {"uniform": [0.3, 0.8]},
                        },
                        {"step": "quantize", "mode": {"choice": ["dynamic", "static"]}},
                    ],
                    [
                        {
                            "step": "distill",
                            "hidden": {"choice": [[16], [32]]},
                            "teacher": "models:/m@champion",
                        },
                        {"step": "export", "format": "both"},
                    ],
                ]
            }
        )
    )
    assert spec.recipe["choice"][1][0]["teacher"] == "models:/m@champion"
    assert registry_teachers(spec.recipe["choice"][1]) == ["models:/m@champion"]
    assert check_recipe([{"step": "quantize", "per_channel": True}]) == []
    assert check_recipe([{"step": "quantize", "mode": "qat", "qat_epochs": 3, "lr": 1e-3}]) == []


def test_registry_teachers_are_found_inside_search_spaces():
    teacher = {"choice": ["models:/a@champion", "trial", "models:/b/3"]}
    recipe = {
        "choice": [
            [{"step": "distill", "teacher": teacher}],
            [{"step": "distill", "teacher": "models:/a@champion"}, {"step": "quantize"}],
        ]
    }
    assert registry_teachers(recipe) == ["models:/a@champion", "models:/b/3"]
    assert registry_teachers([{"step": "distill"}, {"step": "prune"}]) == []


def test_the_compression_example_validates():
    from pathlib import Path

    from orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).parents[2] / "examples" / "fashion_compress.yaml")
    assert spec.task == "fashion-mnist" and len(spec.recipe["choice"]) == 3
