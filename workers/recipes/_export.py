"""Export a torch model to the files that get measured, logged and served: ONNX, TorchScript.

ONNX goes through the TorchScript-based exporter (``dynamo=False``): for the Sequential models
Podium builds it takes ~0.1 s against ~5 s for the dynamo exporter, which matters when every
recipe step is exported and measured. If it fails (a user model it cannot trace) the dynamo
exporter is tried.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from workers.errors import WorkerError
from workers.optimizers._base import HParam
from workers.recipes._base import STEPS, RecipeContext, RecipeState, StepEntry
from workers.tasks import TaskData

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ONNX with a dynamic batch axis.

    Raises:
        WorkerError: both exporters failed; the message has the first exporter's error.
    """
    model = _cpu_eval_copy(model)
    example = torch.zeros(1, *input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        return path
    except Exception as first:  # noqa: BLE001 - fall back to the other exporter, then report
        try:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
            )
            return path
        except Exception:  # noqa: BLE001
            raise WorkerError(f"cannot export the model to ONNX: {first}") from first


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path | None:
    """Trace ``model`` to TorchScript; None when tracing fails (TorchScript is best-effort)."""
    model = _cpu_eval_copy(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.zeros(1, *input_shape))
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.jit.save(traced, str(path))
        return path
    except Exception:  # noqa: BLE001 - an optional format; ONNX is the measured artifact
        return None


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


def export(state: RecipeState, p: dict, data: TaskData, ctx: RecipeContext) -> None:
    if p["format"] in ("torchscript", "both"):
        state.formats.add("torchscript")


STEPS.add(
    "export",
    StepEntry(
        name="export",
        doc="export formats: ONNX (always; the measured artifact) and TorchScript",
        params={
            "format": HParam(
                "onnx",
                "onnx, torchscript (adds a TorchScript file), or both",
                str,
                choices=("onnx", "torchscript", "both"),
            )
        },
        apply=export,
    ),
)
