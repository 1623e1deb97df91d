"""Optimizers by name (``optimizer.name`` in a spec), each with its own hyperparameters.

Add one with ``OPTIMIZERS.add(name, OptimizerEntry(...))``; the spec validator, ``podium
optimizers`` and the training loop read everything they need from the entry.
"""

from __future__ import annotations

# Importing these modules registers their entries (the torch.optim family, cg, game optimizers).
from workers.optimizers import _torch, cg, games  # noqa: F401
from workers.optimizers._base import (
    OPTIMIZERS,
    BatchMode,
    HParam,
    OptimizerEntry,
    build_optimizer,
    check_hparams,
)
from workers.optimizers.catalogue import describe, render_markdown
from workers.optimizers.cg import ConjugateGradient
from workers.optimizers.games import ExtraGradient, OptimisticAdam, OptimisticGD, game_optimizer

__all__ = [
    "OPTIMIZERS",
    "BatchMode",
    "HParam",
    "OptimizerEntry",
    "build_optimizer",
    "check_hparams",
    "ConjugateGradient",
    "ExtraGradient",
    "OptimisticGD",
    "OptimisticAdam",
    "game_optimizer",
    "describe",
    "render_markdown",
]
