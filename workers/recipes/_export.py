"""Export a torch model to the files that get measured, logged and served: ONNX, TorchScript.

Both trace the model on an example batch of the task's own inputs (``TaskData.example_input()``):
its dtype and shape become the exported input's, so float features stay float32 and token ids
stay int64 (a float32 zeros tensor would not even run through an embedding). The batch axis is
exported as dynamic.

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

from tracking import keys
from workers import inputs
from workers.errors import WorkerError
from workers.inputs import Inputs
from workers.optimizers._base import HParam
from workers.recipes._base import STEPS, RecipeContext, RecipeState, StepEntry
from workers.tasks import TaskData

INPUT_NAME = keys.ONNX_INPUT  # a one-input model's (recipes take one)
OUTPUT_NAME = keys.ONNX_OUTPUT
OPSET = 17


def export_onnx(model: nn.Module, example: Inputs, path: Path) -> Path:
    """Write ``model`` (eval mode, CPU, fp32) as ONNX with a dynamic batch axis.

    Args:
        model: the model; a CPU copy in eval mode is exported, ``model`` is not changed.
        example: a batch of the task's inputs (``data.example_input()``), whose dtype the ONNX
            input takes; a tuple of tensors for a model of several inputs (``input_0``, ...).
        path: the file to write.

    Raises:
        WorkerError: both exporters failed; the message has the first exporter's error.

    Example:
        >>> # export_onnx(model, data.example_input(), Path("model.onnx"))
    """
    model = _cpu_eval_copy(model)
    args = inputs.parts(inputs.detached(example))
    names = inputs.names(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
            )
        return path
    except Exception as first:  # noqa: BLE001 - fall back to the other exporter, then report
        try:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=True,
                external_data=False,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_shapes=tuple({0: batch} for _ in args),
            )
            return path
        except Exception:  # noqa: BLE001
            raise WorkerError(f"cannot export the model to ONNX: {first}") from first


def export_torchscript(model: nn.Module, example: Inputs, path: Path) -> Path | None:
    """Trace ``model`` on ``example`` (a batch of the task's inputs) to TorchScript; None when
    tracing fails (TorchScript is best-effort)."""
    model = _cpu_eval_copy(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, inputs.parts(inputs.detached(example)))
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
