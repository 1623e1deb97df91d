"""A team's own model: a builder ``(input_shape, num_classes, **settings) -> nn.Module``.

Its keyword parameters are the settings the spec's ``model`` section takes (checked against this
signature before anything runs), and any of them can be a search space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
