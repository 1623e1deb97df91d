"""Quantization-aware training, the ``quantize`` step's ``mode: qat``: fine-tune the model with
the rounding of ONNX Runtime's static int8 simulated in the forward pass, so the weights learn to
live with it; the artifact is then ONNX Runtime's static QDQ int8 of the fine-tuned weights, with
the activation ranges learned here instead of calibrated ones.

What is simulated is what ``quantize_static`` does to this model, read from its output graph
rather than guessed (``points_in``):

* every Linear/Conv2d weight: int8 symmetric in [-127, 127] with scale ``max|w| / 127``, per
  tensor or per output channel (``per_channel``). It is ONNX Runtime's formula, so the fine-tuned
  fp32 weights quantize to the very integers the forward pass used.
* each activation ONNX Runtime quantizes (the first layer's input; each layer's output after its
  ReLU, which ORT folds into the uint8 range; pooling and flattening outputs; the logits): uint8
  asymmetric over a range that starts at the min/max over the calibration batches (what static
  calibration computes) and then follows an exponential moving average of each batch's min/max.
* gradients: the straight-through estimator (identity inside the range, zero where clipped).

BatchNorm is folded into the Linear/Conv2d before it first: the product of the two is what an
int8 kernel should run, and quantizing the output of the linear layer and of the BatchNorm
separately would cost accuracy and speed. Biases are not rounded in training: ORT stores them as
int32 at scale ``s_in * s_w``, an error far below one uint8 step of the layer's output.

Plain torch ops only (no ``torch.ao``, deprecated in torch 2.13). Models must be an
``nn.Sequential`` (the built-in mlp and cnn): the exporter names each tensor after its position,
which is how a quantized tensor of the ONNX graph is found in the torch model.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workers.errors import WorkerError
from workers.recipes._export import INPUT_NAME, OUTPUT_NAME
from workers.recipes._train import make_optimizer, train_epoch
from workers.tasks import TaskData

ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations, as QuantType.QUInt8
WEIGHT_QMAX = 127  # int8 symmetric weights use [-127, 127] in ONNX Runtime, not [-128, 127]
# Each training batch moves an activation range this fraction of the way to its own min/max
# (torch's observer default): about 100 batches to forget the calibration range.
RANGE_MOMENTUM = 0.01
WEIGHTED = (nn.Linear, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYER_OUTPUT = re.compile(r"^/(\d+)/[^/]+_output_0$")  # the exporter's "/3/Relu_output_0"

QParams = dict[str, list[float]]  # point -> [scale, zero_point]


def train_qat(
    model: nn.Module,
    points: list[str],
    p: dict[str, Any],
    data: TaskData,
    x_calib: torch.Tensor,
    seed: int,
    device: str,
) -> tuple[nn.Sequential, QParams]:
    """Fine-tune ``model`` (BatchNorm already folded) with int8 rounding simulated at ``points``.

    Args:
        points: the activations ONNX Runtime quantizes (``points_in``).
        p: the quantize step's parameters (``per_channel``, ``qat_epochs``, ``lr``, ``batch_size``).
        x_calib: the inputs whose min/max start each activation range.

    Returns:
        The fine-tuned fp32 model (CPU, eval) and the learned activation ranges as
        ``{point: [scale, zero_point]}``.
    """
    fq = FakeQuantModel(_sequential(model), points, p["per_channel"]).to(device)
    fq.calibrate(x_calib.to(device))
    opt = make_optimizer(fq, p["lr"])
    generator = torch.Generator().manual_seed(seed)
    for _ in range(p["qat_epochs"]):
        train_epoch(
            fq, data, opt=opt, batch_size=p["batch_size"], generator=generator, device=device
        )
    fq.cpu().eval()
    return fq.model, fq.qparams()


class FakeQuantModel(nn.Module):
    """A Sequential with int8 weights and uint8 activations simulated where ONNX Runtime puts them.

    In training mode each quantized activation's range follows the batches (moving average); in
    eval mode the ranges are frozen, so the outputs are what the int8 artifact computes (up to
    float rounding order). Parameters are shared with ``model``: training this trains that.
    """

    low: torch.Tensor  # per point, the range's ends (buffers: they move with .to(device))
    high: torch.Tensor

    def __init__(
        self,
        model: nn.Sequential,
        points: list[str],
        per_channel: bool,
        qparams: QParams | None = None,
    ) -> None:
        super().__init__()
        self.model, self.per_channel = model, per_channel
        self.index = {point: i for i, point in enumerate(points)}
        self.register_buffer("low", torch.zeros(len(points)))
        self.register_buffer("high", torch.zeros(len(points)))
        self.calibrating = False
        for point, (scale, zero_point) in (qparams or {}).items():
            # the range whose qparams are exactly these: [-zp * s, (255 - zp) * s]
            self.low[self.index[point]] = (ACT_QMIN - zero_point) * scale
            self.high[self.index[point]] = (ACT_QMAX - zero_point) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._activation("input", x)
        last = len(self.model) - 1
        for i, layer in enumerate(self.model):
            x = self._layer(layer, x)
            x = self._activation("output" if i == last else str(i), x)
        return x

    def _layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating or not isinstance(layer, WEIGHTED):
            return layer(x)
        w = fake_quant(layer.weight, *weight_qparams(layer.weight, self.per_channel))
        if isinstance(layer, nn.Linear):
            return F.linear(x, w, layer.bias)
        return layer._conv_forward(x, w, layer.bias)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, batch: int = 64) -> None:
        """Set each range to the min/max of the unquantized model over ``x``, as ORT's
        calibration does, so training starts from the static int8 model."""
        self.eval()
        self.calibrating = True
        self.low.fill_(float("inf"))
        self.high.fill_(float("-inf"))
        try:
            for start in range(0, len(x), batch):
                self(x[start : start + batch])
        finally:
            self.calibrating = False

    def qparams(self) -> QParams:
        """``{point: [scale, zero_point]}`` of every quantized activation, as plain floats."""
        scale, zero_point = activation_qparams(self.low, self.high)
        return {point: [float(scale[i]), float(zero_point[i])] for point, i in self.index.items()}

    def _activation(self, point: str, x: torch.Tensor) -> torch.Tensor:
        i = self.index.get(point)
        if i is None:
            return x
        if self.calibrating:
            self.low[i] = torch.minimum(self.low[i], x.detach().min())
            self.high[i] = torch.maximum(self.high[i], x.detach().max())
            return x
        if self.training:
            with torch.no_grad():
                self.low[i] += RANGE_MOMENTUM * (x.min() - self.low[i])
                self.high[i] += RANGE_MOMENTUM * (x.max() - self.high[i])
        scale, zero_point = activation_qparams(self.low[i], self.high[i])
        return fake_quant(x, scale, zero_point, ACT_QMIN, ACT_QMAX)


def fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int = -WEIGHT_QMAX,
    qmax: int = WEIGHT_QMAX,
) -> torch.Tensor:
    """``x`` rounded as ONNX Runtime's QuantizeLinear then DequantizeLinear would, with the
    straight-through estimator: the gradient passes unchanged where ``x`` is inside the range
    and is zero where it was clipped."""
    q = torch.round(x / scale) + zero_point  # round half to even, like QuantizeLinear
    deq = (q.clamp(qmin, qmax) - zero_point) * scale
    inside = ((q >= qmin) & (q <= qmax)).to(x.dtype)
    return deq.detach() + (x - x.detach()) * inside


def weight_qparams(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime's int8 symmetric scale: ``2 max|w| / 254`` in float64, stored as float32
    (per output channel, axis 0, with ``per_channel``); zero point 0."""
    w = w.detach()
    absmax = w.abs().flatten(1).amax(1) if per_channel else w.abs().max()
    scale = (absmax.double() * 2 / (2 * WEIGHT_QMAX)).float()
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    if per_channel:
        scale = scale.view(-1, *([1] * (w.dim() - 1)))
    return scale, torch.zeros_like(scale)


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 asymmetric scale and zero point of the range ``[low, high]`` widened to hold 0 (so
    a ReLU's 0 is exact), by ONNX Runtime's formula: at the first step they equal static
    quantization's."""
    rmin, rmax = low.clamp(max=0.0), high.clamp(min=0.0)
    scale = ((rmax.double() - rmin.double()) / (ACT_QMAX - ACT_QMIN)).float()
    scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
    zero_point = torch.round(ACT_QMIN - rmin / scale).clamp(ACT_QMIN, ACT_QMAX)
    return scale, zero_point


# --------------------------------------------------------------------------- model and graph


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> tuple[nn.Sequential, bool]:
    """A copy of ``model`` with each BatchNorm (eval statistics) folded into the Linear/Conv2d
    before it; returns it and whether any was folded."""
    layers: list[nn.Module] = []
    folded = False
    for layer in _sequential(model):
        if not isinstance(layer, NORMS):
            layers.append(copy.deepcopy(layer))
            continue
        prev = layers[-1] if layers else None
        if not isinstance(prev, WEIGHTED):
            raise WorkerError(
                "quantize mode 'qat' folds each BatchNorm into the Linear/Conv2d before it; "
                f"this model has a {type(layer).__name__} after {type(prev).__name__}"
            )
        layers[-1], folded = _folded(prev, layer), True
    return nn.Sequential(*layers).eval(), folded


def _folded(layer: nn.Linear | nn.Conv2d, norm: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """``norm(layer(x))`` as one layer: weight rows scaled by ``gamma / sqrt(var + eps)``."""
    if norm.running_mean is None or norm.running_var is None:
        raise WorkerError("quantize mode 'qat' cannot fold a BatchNorm without running statistics")
    factor = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * factor
    if norm.weight is not None and norm.bias is not None:
        factor, shift = factor * norm.weight, shift * norm.weight + norm.bias
    new = copy.deepcopy(layer)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(factor)
    new.weight = nn.Parameter(layer.weight * factor.view(-1, *([1] * (layer.weight.dim() - 1))))
    new.bias = nn.Parameter(bias * factor + shift)
    return new


def _sequential(model: nn.Module) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise WorkerError(
            "quantize mode 'qat' needs an nn.Sequential model (the built-in mlp and cnn); "
            f"got {type(model).__name__}. Use mode static instead."
        )
    return model


def point_of(tensor: str) -> str | None:
    """The torch position of an ONNX tensor: ``input``, ``output``, or a layer index ("3" for
    ``/3/Relu_output_0``); None for a tensor inside a layer."""
    if tensor == INPUT_NAME:
        return "input"
    if tensor.startswith(OUTPUT_NAME):  # ORT renames the graph output's quantizer input
        return "output"
    match = _LAYER_OUTPUT.match(tensor)
    return match.group(1) if match else None


def points_in(int8: Path) -> list[str]:
    """The activations a static QDQ model quantizes, as torch positions (``point_of``).

    Raises:
        WorkerError: a quantized tensor is not the output of a whole layer.
    """
    points = []
    for tensor in _quantized_activations(int8):
        point = point_of(tensor)
        if point is None:
            raise WorkerError(
                f"quantize mode 'qat' cannot place ONNX tensor {tensor!r} in the torch model; "
                "it supports Sequential models of Linear, Conv2d, BatchNorm, activations and "
                "pooling. Use mode static instead."
            )
        points.append(point)
    return list(dict.fromkeys(points))


def tensor_overrides(fp32: Path, qparams: QParams) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime's ``TensorQuantOverrides`` that give every tensor of ``fp32`` at a trained
    point its learned scale and zero point."""
    import onnx

    graph = onnx.load(str(fp32)).graph
    names = [i.name for i in graph.input] + [o for n in graph.node for o in n.output]
    out = {}
    for name in names:
        point = point_of(name)
        if point in qparams:
            scale, zero_point = qparams[point]
            out[name] = [
                {"scale": np.array(scale, np.float32), "zero_point": np.array(zero_point, np.uint8)}
            ]
    return out


def check_overrides_applied(int8: Path, qparams: QParams) -> None:
    """Every activation ``int8`` quantizes must be one the training simulated.

    Raises:
        WorkerError: one is not (the model changed after quantization-aware training).
    """
    missing = [t for t in _quantized_activations(int8) if point_of(t) not in qparams]
    if missing:
        raise WorkerError(
            f"ONNX Runtime quantized {', '.join(missing)}, which quantization-aware training "
            "did not simulate: the model changed after the qat step; put quantize mode 'qat' "
            "after every prune or distill step"
        )


def _quantized_activations(int8: Path) -> list[str]:
    """Inputs of the QuantizeLinear nodes that quantize a computed tensor (not a weight)."""
    import onnx

    graph = onnx.load(str(int8)).graph
    weights = {i.name for i in graph.initializer}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    return [n.input[0] for n in quantizers if n.input[0] not in weights]
