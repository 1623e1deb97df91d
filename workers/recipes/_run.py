"""Running a recipe: measure the uncompressed baseline, apply each step, export and measure after
each, and hand back the final artifact with its metrics.

Every measurement uses the same protocol (``_measure``): the state is exported to ONNX (int8 once
a quantize step ran), run by ONNX Runtime on CPU with ``ctx.threads`` intra-op threads. The
baseline is measured twice — the eager fp32 torch model (what a user had) and its fp32 ONNX
export (the same runtime, no compression) — so ``speedup`` (vs eager) and ``speedup_vs_onnx_fp32``
separate what the runtime gave from what compression gave.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracking import keys, pipeline
from workers import inputs
from workers.errors import WorkerError
from workers.recipes import _measure
from workers.recipes._base import (
    STEPS,
    RecipeContext,
    RecipeState,
    check_step,
    full_params,
    step_label,
)
from workers.recipes._export import export_onnx, export_torchscript
from workers.recipes._quantize import CALIBRATION_BATCH, check_qat_order, quantize_onnx
from workers.recipes._train import calibration_inputs, for_recipe, outputs, test_score
from workers.tasks import TaskData
from workers.trial.measure import state_dict_bytes

# weights-only {state_dict, model, input_shape, num_classes, extra}: build_model's arguments
FP32_STATE_ARTIFACT = "model_fp32.pt"


@dataclass
class RecipeResult:
    """What a recipe hands back to the trial.

    Attributes:
        metrics: final metrics of the compressed artifact (``test_accuracy``, ``model_size_bytes``,
            ``latency_ms_p50``, ``size_ratio``, ``speedup``...) plus every per-step and baseline
            metric (``recipe.<i>_<step>.<metric>``); all floats, ready to merge into the report.
        steps: per step, its label (``1_quantize``) and its measured metrics.
        artifacts: file name → path, all inside ``ctx.workdir`` (``model.onnx``, ``recipe.json``,
            ``model_fp32.pt``, ``model.torchscript.pt`` if asked for).
        tags: result keys with string values: the CPU latency was measured on
            (``podium_cpu_model``, logged as tag ``podium.cpu_model``).
        model: the final fp32 torch model (pruned/distilled; not quantized), CPU, eval mode.
        model_section: the spec ``model`` section that rebuilds ``model``'s architecture.
    """

    metrics: dict[str, float]
    steps: list[tuple[str, dict[str, float]]]
    artifacts: dict[str, Path]
    tags: dict[str, str]
    model: nn.Module
    model_section: dict[str, Any] = field(default_factory=dict)


def check_recipe(steps: list[Any] | None) -> list[tuple[str, Any, str]]:
    """Problems in a list of concrete steps, as ``("[i].key", value, message)``: each step's
    own, then their order (quantize mode ``qat`` after every step that replaces the model)."""
    problems: list[tuple[str, Any, str]] = []
    for i, step in enumerate(steps or []):
        if not isinstance(step, dict):
            problems.append((f"[{i}]", step, "each recipe step must be a mapping with 'step'"))
            continue
        problems += [(f"[{i}].{key}", value, msg) for key, value, msg in check_step(step)]
    return problems + check_qat_order(steps or [])


def run_recipe(
    steps: list[dict[str, Any]] | None,
    model: nn.Module,
    data: TaskData,
    ctx: RecipeContext | dict[str, Any] | Any,
) -> RecipeResult | None:
    """Compress ``model`` by ``steps`` and measure the exported result; None for no steps.

    Args:
        steps: concrete recipe steps (no search spaces), e.g. ``[{"step": "prune", "method":
            "structured", "sparsity": 0.5}, {"step": "quantize"}]``.
        model: the trained fp32 model; it is not modified.
        data: the trial's task data (fine-tuning uses train, measurement uses test).
        ctx: a :class:`RecipeContext`, a mapping of its fields, or the trial's context object.

    Raises:
        WorkerError: an invalid step, or a step that cannot run on this model.

    Example:
        >>> # result = run_recipe([{"step": "quantize"}], model, data, {"workdir": out})
        >>> # result.metrics["size_ratio"], result.artifacts["model.onnx"]
    """
    if not steps:
        return None
    ctx = coerce_context(ctx)
    problems = check_recipe(steps)
    if problems:
        raise WorkerError("invalid recipe: " + "; ".join(f"recipe{p}: {m}" for p, _, m in problems))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    data = for_recipe(data)  # a dataset task: its test split read once; training streams
    state = RecipeState(copy.deepcopy(model).cpu().eval(), dict(ctx.model_section))
    with tempfile.TemporaryDirectory(prefix="podium-recipe-") as tmp:
        work = Path(tmp)
        metrics, base = _baseline(state, data, ctx, work)
        metric = keys.test_metric(data.primary_metric())
        before, reports, path = base["eager"][metric], [], work / "baseline.onnx"
        for i, step in enumerate(steps):
            entry = STEPS.get(step["step"])
            entry.apply(state, full_params(entry, step), data, ctx)
            path = _export_state(state, data, work / f"step{i}")
            measured = _measure_state(state, path, data, ctx)
            measured[keys.before(metric)] = before
            before = measured[metric]
            label = step_label(i, step["step"])
            reports.append((label, measured))
            metrics.update({keys.recipe_metric(label, k): v for k, v in measured.items()})
        metrics.update(_final(reports[-1][1], base, data))
        artifacts = _write_artifacts(state, path, data, ctx, steps)
    metrics[keys.MEASURE_THREADS] = float(ctx.threads)
    tags = {keys.CPU_MODEL: _measure.cpu_model()}
    return RecipeResult(metrics, reports, artifacts, tags, state.model, state.section)


def coerce_context(ctx: Any) -> RecipeContext:
    """A :class:`RecipeContext` from itself, a mapping, or the trial's context object (which
    carries ``out_dir``, ``threads``, ``device`` and the recipe's inputs in ``extras``)."""
    if isinstance(ctx, RecipeContext) or isinstance(ctx, dict) or ctx is None:
        return RecipeContext.coerce(ctx)
    extras = dict(getattr(ctx, "extras", {}) or {})
    values = {
        k: extras[k]
        for k in ("model_section", "seed", "teachers", "latency_iters", "plugins")
        if k in extras
    }
    values["workdir"] = getattr(ctx, "out_dir", None) or extras.get("workdir")
    values["threads"] = int(extras.get("measure_threads", 1))
    values["device"] = str(getattr(ctx, "device", "cpu"))
    return RecipeContext.coerce(values)


def _baseline(
    state: RecipeState, data: TaskData, ctx: RecipeContext, work: Path
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Measure the uncompressed model: eager fp32 torch and its fp32 ONNX export."""
    metric, score = _score(data)
    eager = {
        metric: score(outputs(state.model, data.x_test)),
        keys.MODEL_SIZE_BYTES: float(state_dict_bytes(state.model)),
    }
    eager.update(_measure.param_counts(state.model))
    eager.update(_measure.measure_eager(state.model, data.x_test, ctx.threads, ctx.latency_iters))
    onnx_path = _whole(export_onnx(state.model, data.example_input(), work / "baseline.onnx"), data)
    onnx = _measure_file(onnx_path, data, ctx)
    metrics = {keys.recipe_metric(keys.RECIPE_BASELINE_EAGER, k): v for k, v in eager.items()}
    metrics.update({keys.recipe_metric(keys.RECIPE_BASELINE_ONNX, k): v for k, v in onnx.items()})
    return metrics, {"eager": eager, "onnx": onnx}


def _export_state(state: RecipeState, data: TaskData, folder: Path) -> Path:
    fp32 = export_onnx(state.model, data.example_input(), folder / "fp32.onnx")
    if state.quantize is None:
        return _whole(fp32, data)
    # The model alone is quantized: preprocessing and the answer stay exact.
    n = int(state.quantize.get("calibration_batches", 0)) * CALIBRATION_BATCH
    calib = calibration_inputs(data, n) if state.quantize["mode"] != "dynamic" else None
    return _whole(quantize_onnx(fp32, folder / "int8.onnx", state.quantize, calib), data)


def _whole(model_file: Path, data: TaskData) -> Path:
    """The registered graph around a model file: the task's front, the model, the answer
    (``tracking.pipeline``); what every step is measured on, from the raw test split."""
    import onnx

    pipe = data.pipeline
    if pipe is None:  # a task that was not prepared (a direct caller): the model alone
        return model_file
    front = onnx.load_from_string(pipe.front_onnx) if pipe.front_onnx else None
    composed = pipeline.compose(onnx.load(str(model_file)), pipe.answer, front)
    path = model_file.with_name(f"{model_file.stem}.pipeline.onnx")
    onnx.save(composed, str(path))
    return path


def _measure_file(path: Path, data: TaskData, ctx: RecipeContext) -> dict[str, float]:
    if data.pipeline is None:
        return _measure.measure_onnx(
            path, data.x_test, data.y_test, ctx.threads, ctx.latency_iters, _score(data)
        )
    x, y = data.pipeline.raw_test
    metric, primary = keys.test_metric(data.primary_metric()), data.primary_metric()
    metrics = data.metrics_fn(units=False)  # the pipeline answers in the target's units
    score = (metric, lambda out: float(metrics(out, y)[primary]))
    return _measure.measure_pipeline(
        path, x, data.pipeline.answer, score, ctx.threads, ctx.latency_iters
    )


def _measure_state(
    state: RecipeState, path: Path, data: TaskData, ctx: RecipeContext
) -> dict[str, float]:
    out = _measure.param_counts(state.model)
    out.update(_measure_file(path, data, ctx))
    return out


def _score(data: TaskData) -> tuple[str, Any]:
    """The task's primary test metric: its name and a function of the test outputs."""
    return keys.test_metric(data.primary_metric()), test_score(data)


def _final(
    last: dict[str, float], base: dict[str, dict[str, float]], data: TaskData
) -> dict[str, float]:
    """The compressed artifact's metrics under the plain names, plus the ratios and the drop of
    the task's primary metric (in its units; worse is positive)."""
    eager, onnx = base["eager"], base["onnx"]
    metric = keys.test_metric(data.primary_metric())
    final = {k: v for k, v in last.items() if k != keys.before(metric)}
    lost = eager[metric] - last[metric]
    final[keys.METRIC_DROP] = lost if data.metric_modes_all()[metric] == "max" else -lost
    final[keys.SIZE_RATIO] = onnx[keys.MODEL_SIZE_BYTES] / last[keys.MODEL_SIZE_BYTES]
    final[keys.SPEEDUP] = eager[keys.LATENCY_MS_P50] / last[keys.LATENCY_MS_P50]
    final[keys.SPEEDUP_VS_ONNX] = onnx[keys.LATENCY_MS_P50] / last[keys.LATENCY_MS_P50]
    final[keys.THROUGHPUT_RATIO] = last[keys.THROUGHPUT_SPS] / eager[keys.THROUGHPUT_SPS]
    if metric == keys.TEST_ACCURACY:
        final[keys.ACCURACY_DROP_PTS] = lost * 100
    return final


def _write_artifacts(
    state: RecipeState, path: Path, data: TaskData, ctx: RecipeContext, steps: list[dict[str, Any]]
) -> dict[str, Path]:
    """Copy the final ONNX file into ``ctx.workdir`` with the files that describe it.

    Both descriptions carry what ``build_model`` needs to rebuild the model: its section, input
    shape, class count and the task's ``extra`` facts (a text model's ``vocab_size``; the
    vocabulary that turns text into the ONNX model's input ids).
    """
    out = {keys.ONNX_ARTIFACT: Path(shutil.copyfile(path, ctx.workdir / keys.ONNX_ARTIFACT))}
    shape, classes, extra = list(data.input_shape), data.num_classes, dict(data.extra)
    fp32 = ctx.workdir / FP32_STATE_ARTIFACT
    torch.save(
        {
            "state_dict": state.model.state_dict(),
            "model": state.section,
            "input_shape": shape,
            "num_classes": classes,
            "extra": extra,
        },
        fp32,
    )
    out[FP32_STATE_ARTIFACT] = fp32
    if "torchscript" in state.formats:
        ts = export_torchscript(
            state.model, data.example_input(), ctx.workdir / keys.TORCHSCRIPT_ARTIFACT
        )
        if ts is not None:
            out[keys.TORCHSCRIPT_ARTIFACT] = ts
    card = {
        "model": state.section,
        "input_shape": shape,
        "input_dtype": inputs.dtype_name(data.example_input()),
        "num_classes": classes,
        "extra": extra,
        "steps": steps,
        "quantize": state.quantize,
        "onnx_inputs": _io_names(path, "input"),
        "onnx_outputs": _io_names(path, "output"),
    }
    out[keys.RECIPE_ARTIFACT] = ctx.workdir / keys.RECIPE_ARTIFACT
    out[keys.RECIPE_ARTIFACT].write_text(json.dumps(card, indent=2, default=str))
    return out


def _io_names(path: Path, which: str) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [v.name for v in (graph.input if which == "input" else graph.output)]
