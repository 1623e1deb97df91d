"""Training and evaluation loops: plain PyTorch, no Ray, no MLflow.

One epoch = one pass over the training split in batches (``batch_size`` = whole split for
full-batch methods). The optimizer step goes through a closure so line-search (cg) and
extragradient methods can re-evaluate the loss; the rest call it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.errors import TrialDivergedError

Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochResult:
    train_loss: float
    steps: int


def batch_size_for(mode: str, requested: int | None, n_train: int) -> int:
    """The batch size a batch mode implies: full → all, single → 1 unless set, else 64."""
    if mode == "full":
        return n_train
    if requested is not None:
        return requested
    return 1 if mode == "single" else 64


def l1_norm(model: nn.Module) -> torch.Tensor:
    # Weights only: biases and norm scales are not what L1 should drive to zero before pruning.
    return sum(
        (p.abs().sum() for n, p in model.named_parameters() if n.endswith("weight")),
        torch.zeros(()),
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    *,
    needs_closure: bool = False,
    l1_penalty: float = 0.0,
    schedule: Any = None,
    adversary: Adversary | None = None,
) -> EpochResult:
    """One pass over ``(x, y)`` in shuffled batches.

    Raises:
        TrialDivergedError: the loss became NaN or infinite (the trial fails with this reason).
    """
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    perm = torch.randperm(len(x), generator=generator)
    total, seen, steps = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        idx = perm[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if adversary is not None:
            xb = adversary(model, xb, yb)

        def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            if l1_penalty:
                loss = loss + l1_penalty * l1_norm(model)
            loss.backward()
            return loss

        loss: torch.Tensor
        if needs_closure:
            loss = optimizer.step(closure)  # type: ignore[arg-type,assignment]
        else:
            loss = closure()
            optimizer.step()
        if schedule is not None:
            schedule.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrialDivergedError(
                f"training loss became {value} at step {steps + 1} of the epoch"
            )
        total += value * len(idx)
        seen += len(idx)
        steps += 1
    return EpochResult(total / seen, steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``(x, y)`` in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size])
        yb = y[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(x), correct / len(x)
