"""Model architectures by name: ``mlp`` and ``cnn``, each with batch-norm and dropout knobs.

A builder takes the task's input shape and class count plus the spec's ``model`` section and returns
an ``nn.Module`` mapping ``(batch, *input_shape)`` float32 to ``(batch, num_classes)`` logits.

A team's model may return more than logits: a Hugging Face ``ModelOutput`` (``.logits``), a dict
(``["logits"]``), a tuple (its first element), or what ``model.output: NAME`` names.
:func:`build_model` gives every plug-in model a forward hook that hands on the logits alone, so
training, evaluation, ONNX export, quantization, distillation and serving all see one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tracking import keys
from workers import inputs
from workers.errors import WorkerError
from workers.registry import (
    Registry,
    declared_settings,
    is_plugin_ref,
    load_plugin,
)

ModelBuilder = Callable[..., nn.Module]


MODELS: Registry[ModelBuilder] = Registry("model.arch")


OUTPUT_KEY = keys.MODEL_OUTPUT  # not a setting of the builder: which output is the logits


def logits_of(out: Any, name: str | None = None) -> Any:
    """The logits in a model's output: ``out`` itself when a tensor; else the attribute or key
    ``name``; else ``.logits`` / ``["logits"]``; else a tuple's first element.

    Example:
        >>> import torch
        >>> logits_of({"logits": torch.ones(2, 3), "hidden": torch.zeros(2, 8)}).shape
        torch.Size([2, 3])
        >>> logits_of((torch.ones(2, 3), torch.zeros(2)), None).shape
        torch.Size([2, 3])

    Raises:
        WorkerError: no logits can be found; the message says what the model returned.
    """
    if isinstance(out, torch.Tensor):
        return out
    for key in [name] if name else ["logits"]:
        if isinstance(out, Mapping) and key in out:
            return out[key]
        if not isinstance(out, Mapping) and hasattr(out, key):
            return getattr(out, key)
    if not name and isinstance(out, (tuple, list)) and out:
        return out[0]
    found = sorted(out) if isinstance(out, Mapping) else type(out).__name__
    raise WorkerError(
        f"the model returned {found}: no {name or 'logits'!r} in it; set model.output to the "
        "name of the output that holds the logits"
    )


class _Logits:
    """A forward hook that replaces a model's output by its logits (:func:`logits_of`); an
    object, not a closure, so the model still deep-copies and pickles."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def __call__(self, module: nn.Module, args: Any, out: Any) -> Any:
        return logits_of(out, self.name)


def _dense_block(n_in: int, n_out: int, batch_norm: bool, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(n_out))
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (128, 64),
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Flatten, then ``Linear → [BatchNorm] → ReLU → [Dropout]`` per hidden size, then logits."""
    n_in = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += _dense_block(n_in, width, batch_norm, dropout)
        n_in = width
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (16, 32),
    hidden: Sequence[int] = (128, 64),
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """``Conv3x3 → [BatchNorm] → ReLU → MaxPool2`` per channel count, then an MLP head.

    Input must be ``(C, H, W)``; each block halves H and W (floor), so 28x28 → 14 → 7.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"model.arch 'cnn' needs image input (C, H, W), got shape {tuple(input_shape)}"
        )
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers.append(nn.Conv2d(c, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers.append(nn.Flatten())
    n_in = c * h * w
    for width in hidden:
        layers += _dense_block(n_in, width, batch_norm, dropout)
        n_in = width
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


def build_model(
    section: dict[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    extra: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the model a resolved spec ``model`` section describes.

    The builder is called as ``builder(input_shape, num_classes, **settings)`` with the section's
    keys the builder declares (a section under a choice of archs holds the keys of all of them);
    a parameter the builder declares that the section does not set is taken from the task's
    ``extra`` facts when they have it (a text model's ``vocab_size``).

    Example:
        >>> m = build_model({"arch": "mlp", "hidden": [32]}, (64,), 10)
        >>> sum(p.numel() for p in m.parameters())
        2410
    """
    kwargs = {k: v for k, v in section.items() if k not in ("arch", OUTPUT_KEY)}
    arch = section.get("arch", "mlp")
    builder = load_plugin(arch) if is_plugin_ref(arch) else MODELS.get(arch)
    if not is_plugin_ref(arch) and inputs.is_multi_shape(input_shape):
        raise WorkerError(
            f"model.arch {arch!r} takes one input tensor; the task gives "
            f"{len(input_shape)} ({tuple(input_shape)}): use a model plug-in "
            "(module:function) whose forward takes them all"
        )
    declared, takes_any = declared_settings(builder)
    # Under a choice of archs a section holds the keys of all of them; each gets its own.
    kwargs = {k: v for k, v in kwargs.items() if takes_any or k in declared}
    for name in declared:
        if name not in kwargs and extra and name in extra:
            kwargs[name] = extra[name]
    model = builder(inputs.as_shape(input_shape), num_classes, **kwargs)
    if is_plugin_ref(arch):  # built-ins return logits; a team's model may return more
        model.register_forward_hook(_Logits(section.get(OUTPUT_KEY)))
    return model
