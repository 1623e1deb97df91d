"""Model architectures by name: ``mlp`` and ``cnn``, each with batch-norm and dropout knobs.

A builder takes the task's input shape and class count plus the spec's ``model`` section and returns
an ``nn.Module`` mapping ``(batch, *input_shape)`` float32 to ``(batch, num_classes)`` logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from workers.registry import Registry, declared_settings, is_plugin_ref, load_plugin

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model.arch")


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
    kwargs = {k: v for k, v in section.items() if k != "arch"}
    arch = section.get("arch", "mlp")
    builder = load_plugin(arch) if is_plugin_ref(arch) else MODELS.get(arch)
    declared, takes_any = declared_settings(builder)
    # Under a choice of archs a section holds the keys of all of them; each gets its own.
    kwargs = {k: v for k, v in kwargs.items() if takes_any or k in declared}
    for name in declared:
        if name not in kwargs and extra and name in extra:
            kwargs[name] = extra[name]
    return builder(tuple(input_shape), num_classes, **kwargs)


from workers import text_models  # noqa: E402,F401  (registers the text models)
