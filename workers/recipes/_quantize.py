"""The ``quantize`` step: int8 with ONNX Runtime, the backend that is really fast on CPU.

``torch.ao`` dynamic int8 is deprecated in torch 2.13 and was no faster than fp32 at batch 1 on an
MLP here; ONNX Runtime's int8 kernels are. So this step records the settings and every later
export of the recipe state is quantized after the fp32 ONNX export:

* ``dynamic``: int8 weights; activations quantized on the fly per batch (no calibration).
* ``static``: int8 weights and activations, activation ranges calibrated on
  ``calibration_batches`` batches of 64 training examples (QDQ format, which ONNX Runtime fuses
  into integer kernels).

Quantization-aware training is not offered: ONNX Runtime's post-training quantization is what
is measured here, and a QAT path through the deprecated ``torch.ao`` could not be verified to
deliver a faster artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import WorkerError
from workers.optimizers._base import HParam
from workers.recipes._base import STEPS, RecipeContext, RecipeState, StepEntry
from workers.tasks import TaskData

CALIBRATION_BATCH = 64


def quantize(state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext) -> None:
    """Record int8 settings; ``quantize_onnx`` applies them at each later export."""
    state.quantize = dict(p)


def quantize_onnx(src: Path, dst: Path, settings: dict[str, Any], x_calib: torch.Tensor) -> Path:
    """Write the int8 version of ONNX model ``src`` to ``dst``.

    Args:
        settings: the step's parameters (``mode``, ``calibration_batches``, ``per_channel``).
        x_calib: training inputs; the first ``calibration_batches * 64`` calibrate static mode.
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
                src, dst, weight_type=QuantType.QInt8, per_channel=settings["per_channel"]
            )
        else:
            n = settings["calibration_batches"] * CALIBRATION_BATCH
            quantize_static(
                src,
                dst,
                _Calibration(x_calib[:n]),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=settings["per_channel"],
            )
    except Exception as e:  # noqa: BLE001 - translate onnxruntime's errors at the boundary
        raise WorkerError(
            f"ONNX Runtime could not quantize the model ({settings['mode']}): {e}"
        ) from e
    return dst


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over fixed batches of training inputs."""

    def __init__(self, x: torch.Tensor) -> None:
        arr = x.numpy().astype(np.float32, copy=False)
        self._batches = iter(
            [
                {"input": arr[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(arr), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


STEPS.add(
    "quantize",
    StepEntry(
        name="quantize",
        doc="int8 with ONNX Runtime: dynamic, or static with calibration",
        params={
            "mode": HParam("dynamic", "dynamic or static int8", str, choices=("dynamic", "static")),
            "calibration_batches": HParam(
                8, "static: batches of 64 training inputs to calibrate on", int, low=1
            ),
            "per_channel": HParam(
                False, "one scale per output channel (more accurate, bigger)", bool
            ),
        },
        apply=quantize,
    ),
)
