"""From the data a user has to the model's inputs, and back to an answer in the user's terms.

A task returns its splits raw (a DataFrame's float64 columns, uint8 images, review strings) with
``preprocess``: what turns them into model inputs, fitted on the training split. Trials train on
:func:`prepare`'s result: the splits preprocessed once per process (no per-step cost) and, for
a regression with ``target_scale``, targets standardised; metrics stay in the target's units.
The same preprocessing becomes the front of the registered ONNX graph (``tracking.pipeline``).

``preprocess`` is either a ``torch.nn.Module`` (exported into the graph by torch's exporter:
:class:`Standardize`, :class:`Rescale`, or a team's own) or an object with ``__call__(raw) ->
tensor`` and ``onnx_model() -> onnx.ModelProto`` (a tokenizer whose vocabulary lives in the graph).

Example:
    >>> import numpy as np
    >>> from workers.tasks import split_arrays
    >>> x = np.random.default_rng(0).normal(50, 10, size=(100, 3))  # raw float64 columns
    >>> raw = split_arrays("demo", x, (x[:, 0] > 50).astype(int), 0, preprocess=standardize)
    >>> raw.x_train.dtype, prepare(raw).x_train.dtype
    (torch.float64, torch.float32)
    >>> bool(prepare(raw).x_train.mean().abs() < 0.2)
    True
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tracking import pipeline as answer_graph
from workers import inputs

FRONT_INPUT = "input"


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, in float32 whatever the input's dtype (pandas' float64
    columns are cast inside the graph)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.to(torch.float32))
        # A constant column has no spread: leave it centred, not divided by zero.
        self.register_buffer("std", torch.where(std > 0, std, torch.ones_like(std)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) - self.mean) / self.std


def standardize(x_train: torch.Tensor) -> Standardize:
    """A :class:`Standardize` fitted on the training split's columns."""
    x = x_train.double()
    return Standardize(x.mean(0), x.std(0, unbiased=False))


class Rescale(nn.Module):
    """``x * factor`` in float32, reshaped to ``shape`` per example (pixels 0..255 to 0..1, a
    flat row of 64 pixels to an ``(1, 8, 8)`` image)."""

    def __init__(self, factor: float, shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.factor = float(factor)
        self.shape = tuple(shape) if shape is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32) * self.factor
        return out if self.shape is None else out.reshape(-1, *self.shape)


def rescale(factor: float, shape: Sequence[int] | None = None) -> Any:
    """A fitter (``x_train -> module``) for :class:`Rescale`: nothing to learn from the data."""
    return lambda _x_train: Rescale(factor, shape)


@dataclass(frozen=True)
class Pipeline:
    """What a prepared task keeps of the raw one: the front, the answer, raw example inputs and
    the raw test split (what the registered graph is measured on)."""

    preprocess: Any
    answer: dict[str, Any]
    raw_example: Any
    raw_test: tuple[Any, Any]

    @functools.cached_property
    def front_onnx(self) -> bytes | None:
        """The front as ONNX bytes (None: raw inputs are the model's inputs)."""
        if self.preprocess is None:
            return None
        if hasattr(self.preprocess, "onnx_model"):
            return bytes(self.preprocess.onnx_model().SerializeToString())
        return _export_front(self.preprocess, self.raw_example)


def _export_front(module: nn.Module, example: Any) -> bytes:

    buffer = io.BytesIO()
    x = torch.as_tensor(np.asarray(example))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (x,),
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted
            dynamo=False,
            opset_version=17,
            input_names=[FRONT_INPUT],
            output_names=[answer_graph.FRONT_OUTPUT],
            dynamic_axes={FRONT_INPUT: {0: "batch"}, answer_graph.FRONT_OUTPUT: {0: "batch"}},
        )
    return buffer.getvalue()


def apply(preprocess: Any, x: Any, batch: int = 4096) -> Any:
    """``preprocess`` over ``x`` in batches, without gradients."""
    if preprocess is None:
        return x
    if isinstance(preprocess, nn.Module):
        preprocess = preprocess.eval()
    with torch.no_grad():
        parts = [preprocess(x[i : i + batch]) for i in range(0, len(x), batch)]
    return torch.cat(parts) if parts else preprocess(x[:0])


def prepare(data: Any) -> Any:
    """The task as trials train on it: model inputs, scaled targets, and the :class:`Pipeline`
    that the registered graph is built from. A prepared task is returned as it is."""
    if data.pipeline is not None:
        return data
    answer = answer_graph.answer_of(data.kind, data.num_classes, data.classes, data.target_scale)
    if not data.in_memory:
        example = data.example_input()
        pipe = Pipeline(None, answer, inputs.detached(example), (None, None))
        return dataclasses.replace(data, pipeline=pipe)
    splits: dict[str, Any] = {}
    for split, (x, y) in data.splits.items():
        splits[split] = (apply(data.preprocess, x), _scaled(y, data.target_scale))
    raw_example = _take(data.example if data.example is not None else data.x_test, 4)
    pipe = Pipeline(data.preprocess, answer, raw_example, (data.x_test, data.y_test))
    shape = data.input_shape
    if data.preprocess is not None:
        shape = tuple(splits["train"][0].shape[1:])
    example = None if data.example is None else apply(data.preprocess, data.example)
    return dataclasses.replace(
        data, splits=splits, input_shape=shape, example=example, pipeline=pipe, preprocess=None
    )


def _take(x: Any, n: int) -> Any:
    if isinstance(x, (list, np.ndarray)):  # strings: a list (a checkpoint loads it weights-only)
        return [str(v) for v in x[:n]]
    return inputs.detached(inputs.take(x, slice(0, n)))


def _scaled(y: torch.Tensor, scale: Any) -> torch.Tensor:
    if scale is None:
        return y
    mean, std = (torch.as_tensor(v, dtype=y.dtype) for v in scale)
    return (y - mean.squeeze()) / std.squeeze() if y.ndim == 1 else (y - mean) / std


def target_units(out: torch.Tensor, y: torch.Tensor, answer: dict[str, Any]) -> tuple[Any, Any]:
    """Outputs and targets back in the target's units (a regression trained on scaled targets)."""
    if "target_std" not in answer:
        return out, y
    std = torch.as_tensor(answer["target_std"], dtype=torch.float64, device=out.device)
    mean = torch.as_tensor(answer["target_mean"], dtype=torch.float64, device=out.device)
    out = out.double() * std + mean
    y = y.double().reshape(out.shape) * std + mean
    return out, y


def head(data: Any, **rows: int) -> Any:
    """The first ``rows[split]`` examples of each split named (``train=3000, test=2000``), in
    the model's inputs and the raw ones alike (a smaller task for a quick test or benchmark)."""
    cut: dict[str, Any] = {}
    for split, n in rows.items():
        cut[f"x_{split}"] = inputs.take(getattr(data, f"x_{split}"), slice(0, n))
        cut[f"y_{split}"] = getattr(data, f"y_{split}")[:n]
    pipe = data.pipeline
    if pipe is not None and "test" in rows and pipe.raw_test[0] is not None:
        x, y = pipe.raw_test
        pipe = dataclasses.replace(pipe, raw_test=(x[: rows["test"]], y[: rows["test"]]))
    return dataclasses.replace(data.with_parts(**cut), pipeline=pipe)
