"""The ``quantize`` step: int8 with ONNX Runtime, the backend that is really fast on CPU.

``torch.ao`` dynamic int8 is deprecated in torch 2.13 and was no faster than fp32 at batch 1 on an
MLP here; ONNX Runtime's int8 kernels are. So this step records the settings and every later
export of the recipe state is quantized after the fp32 ONNX export:

* ``dynamic``: int8 weights, embedding tables included (``DYNAMIC_OPS``); activations quantized
  on the fly per batch (no calibration).
* ``static``: int8 weights and activations, activation ranges calibrated on
  ``calibration_batches`` batches of 64 training examples (QDQ format, which ONNX Runtime fuses
  into integer kernels).
* ``qat``: quantization-aware training (``_qat``), then ``static``. The model is fine-tuned for
  ``qat_epochs`` (Adam, ``lr``, ``batch_size``, as prune's fine-tuning) with exactly the
  rounding static int8 will apply simulated in the forward pass, starting from the calibrated
  ranges; the artifact is ORT's static QDQ int8 of the fine-tuned weights with the activation
  ranges learned in training (``TensorQuantOverrides``). Same graph, size and kernels as
  ``static``. BatchNorm is folded into the layer before it, so the model's section says
  ``batch_norm: false`` afterwards. Put it after every prune, distill and fold step.

On x86 CPUs without VNNI, ONNX Runtime's default u8 x s8 kernels add pairs of products in int16
with saturation (VPMADDUBSW), which neither calibration nor training models: there the int8
artifact differs from the simulation by a few output steps on some inputs (both static and qat
are affected; the session option ``session.x64quantprecision=1`` avoids it at a cost in speed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import WorkerError
from workers.optimizers._base import HParam
from workers.recipes._base import STEPS, Problems, RecipeContext, RecipeState, StepEntry
from workers.recipes._export import INPUT_NAME, export_onnx
from workers.recipes._qat import (
    QParams,
    check_overrides_applied,
    fold_batch_norm,
    points_in,
    tensor_overrides,
    train_qat,
)
from workers.recipes._train import calibration_inputs
from workers.tasks import TaskData

CALIBRATION_BATCH = 64
MODES = ("dynamic", "static", "qat")
MODEL_STEPS = ("prune", "distill", "fold")  # steps that replace the torch model
QAT_QPARAMS = "activation_qparams"  # the settings key of qat's learned {point: [scale, zero_point]}
# What dynamic int8 quantizes, named rather than left to ONNX Runtime's default: the weights of
# MatMul (Linear layers; ORT turns Gemm into MatMul first), Conv, LSTM and Attention, and the
# tables that Gather reads rows from (embeddings: most of a text model's bytes). Without Gather an
# embedding table stays float32 and the file barely shrinks.
DYNAMIC_OPS = ("MatMul", "Conv", "LSTM", "Attention", "Gather")


def quantize(state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext) -> None:
    """Record int8 settings (for ``qat`` after fine-tuning, with the learned activation ranges);
    ``quantize_onnx`` applies them at each later export."""
    settings = dict(p)
    if p["mode"] == "qat":
        settings[QAT_QPARAMS] = _quantization_aware_training(state, p, data, ctx)
    state.quantize = settings


def _quantization_aware_training(
    state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext
) -> QParams:
    """Fold BatchNorm, find what ORT's static int8 quantizes, fine-tune with it simulated."""
    model, folded = fold_batch_norm(state.model)
    x_calib = calibration_inputs(data, p["calibration_batches"] * CALIBRATION_BATCH, ctx.seed)
    points = _quantized_points(model, data, p)
    state.model, qparams = train_qat(model, points, p, data, x_calib, ctx.seed, ctx.device)
    if folded:  # the section must keep rebuilding the model: BatchNorm is now inside the weights
        state.section = {**state.section, "batch_norm": False}
    return qparams


def _quantized_points(model: torch.nn.Module, data: TaskData, p: dict) -> list[str]:
    """The activations ONNX Runtime's static int8 quantizes in ``model``: quantize it and look."""
    with tempfile.TemporaryDirectory(prefix="podium-qat-") as tmp:
        fp32 = export_onnx(model, data.example_input(), Path(tmp) / "fp32.onnx")
        static = {**p, "mode": "static", "calibration_batches": 1}
        calib = calibration_inputs(data, CALIBRATION_BATCH)
        return points_in(quantize_onnx(fp32, Path(tmp) / "int8.onnx", static, calib))


def quantize_onnx(
    src: Path, dst: Path, settings: dict[str, Any], x_calib: torch.Tensor | None
) -> Path:
    """Write the int8 version of ONNX model ``src`` to ``dst``.

    Args:
        settings: the step's parameters (``mode``, ``calibration_batches``, ``per_channel``).
        x_calib: training inputs; the first ``calibration_batches * 64`` calibrate static mode
            (``_train.calibration_inputs``); None for dynamic mode.
    """
    try:
        from onnxruntime.quantization import (
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise WorkerError("the quantize step needs onnxruntime: pip install onnxruntime") from e
    try:
        if settings["mode"] == "dynamic":
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                per_channel=settings["per_channel"],
                op_types_to_quantize=list(DYNAMIC_OPS),
            )
        else:
            n = settings["calibration_batches"] * CALIBRATION_BATCH
            qat = settings["mode"] == "qat"
            overrides = tensor_overrides(src, settings[QAT_QPARAMS]) if qat else {}
            quantize_static(
                src,
                dst,
                _Calibration(x_calib[:n]),  # type: ignore[index]  # static: always given
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=settings["per_channel"],
                extra_options={"TensorQuantOverrides": overrides},
            )
    except Exception as e:  # noqa: BLE001 - translate onnxruntime's errors at the boundary
        raise WorkerError(
            f"ONNX Runtime could not quantize the model ({settings['mode']}): {e}"
        ) from e
    if settings["mode"] == "qat":
        check_overrides_applied(dst, settings[QAT_QPARAMS])
    return dst


def check_qat_order(steps: list[Any]) -> Problems:
    """A step that replaces the model after ``quantize`` mode ``qat`` would throw away what qat
    trained (the weights and their activation ranges): qat must come after prune and distill.
    Returns ``("[i].step", name, message)`` problems for a concrete list of steps."""
    problems: Problems = []
    qat_at = None
    for i, step in enumerate(steps):
        name = step.get("step") if isinstance(step, dict) else None
        if name == "quantize":
            qat_at = i if step.get("mode") == "qat" else None  # a later quantize replaces qat's
        elif name in MODEL_STEPS and qat_at is not None:
            problems.append(
                (
                    f"[{i}].step",
                    name,
                    f"{name!r} after quantize mode 'qat' (recipe[{qat_at}]) would change the "
                    "model whose int8 ranges qat trained; put qat after every prune, distill "
                    "and fold",
                )
            )
    return problems


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over fixed batches of training inputs, in
    their own dtype (the exported model's input dtype: float32, or int64 token ids)."""

    def __init__(self, x: torch.Tensor) -> None:
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        self._batches = iter(
            [
                {INPUT_NAME: arr[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(arr), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


STEPS.add(
    "quantize",
    StepEntry(
        name="quantize",
        doc="int8 with ONNX Runtime: dynamic, static with calibration, or qat (fine-tuned)",
        params={
            "mode": HParam(
                "dynamic",
                "dynamic, static, or qat (static int8 after quantization-aware fine-tuning)",
                str,
                choices=MODES,
            ),
            "calibration_batches": HParam(
                8,
                "static and qat: batches of 64 training inputs to calibrate (qat: start) on",
                int,
                low=1,
            ),
            "per_channel": HParam(
                False, "one scale per output channel (more accurate, bigger)", bool
            ),
            "qat_epochs": HParam(2, "qat: fine-tuning epochs with int8 simulated", int, low=1),
            "lr": HParam(1e-4, "qat: Adam learning rate for fine-tuning", float, low=0.0),
            "batch_size": HParam(128, "qat: fine-tuning batch size", int, low=1),
        },
        apply=quantize,
    ),
)
