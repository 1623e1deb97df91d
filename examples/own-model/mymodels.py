"""A team's own model: a builder ``(input_shape, num_classes, **settings) -> nn.Module``.

Its keyword parameters are the settings the spec's ``model`` section takes (checked against this
signature before anything runs), and any of them can be a search space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def residual_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 32,
    depth: int = 2,
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """``depth`` residual blocks of ``width`` units: x + act(Linear(x))."""
    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[activation]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        *[_Residual(width, act(), dropout) for _ in range(depth)],
        nn.Linear(width, num_classes),
    )


class _Residual(nn.Module):
    def __init__(self, width: int, act: nn.Module, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), act, nn.Dropout(dropout))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x + self.body(x)


def tabular_with_category(
    input_shape: Sequence[Sequence[int]],
    num_classes: int,
    width: int = 32,
    category_dim: int = 4,
    categories: int = 2,
) -> nn.Module:
    """A model of two inputs: numbers ``(batch, n)`` and a category id ``(batch,)``, embedded
    and joined before an MLP. ``input_shape`` is ``((n,), ())``: one shape per input tensor."""
    return _NumbersAndCategory(int(input_shape[0][0]), categories, category_dim, width, num_classes)


class _NumbersAndCategory(nn.Module):
    def __init__(self, n: int, categories: int, dim: int, width: int, outputs: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(categories, dim)
        self.body = nn.Sequential(nn.Linear(n + dim, width), nn.ReLU(), nn.Linear(width, outputs))

    def forward(self, numbers, category):  # type: ignore[no-untyped-def]
        return self.body(torch.cat([numbers, self.embed(category)], dim=1))
