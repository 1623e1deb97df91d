"""The small training loop recipe steps share: fine-tuning after pruning, training a student.

Recipes train with Adam on minibatches whatever optimizer the trial searched: a step's job is to
recover accuracy after a change, not to compare optimizers, and one fixed loop keeps steps
comparable across trials.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from workers.tasks import TaskData

# loss(model, x, y, aux) -> scalar tensor; aux is the batch's rows of train_epoch's ``aux`` (e.g. a
# teacher's logits for distillation) or None.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def cross_entropy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None
) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def task_loss(data: TaskData) -> LossFn:
    """The task's own loss (cross-entropy, MSE, BCE, or its ``loss``) as a recipe loss."""
    loss = data.loss_fn()
    return lambda model, x, y, aux: loss(model(x), y)


def train_epoch(
    model: nn.Module,
    data: TaskData,
    *,
    opt: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: LossFn | None = None,
    after_step: Callable[[], None] | None = None,
    aux: torch.Tensor | None = None,
    device: str = "cpu",
) -> float:
    """One pass over the training split in a seeded random order; returns the mean loss.

    ``after_step`` runs after every optimizer step: pruning uses it to re-apply masks so pruned
    weights stay exactly zero while the rest learn. ``loss_fn`` defaults to the task's loss.
    """
    loss_fn = loss_fn or task_loss(data)
    model.train()
    n = len(data.x_train)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
        opt.zero_grad(set_to_none=True)
        extra = aux[idx].to(device) if aux is not None else None
        loss = loss_fn(model, x, y, extra)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        total += loss.item() * len(idx)
    model.eval()
    return total / n


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Eager top-1 accuracy (the exported artifact's accuracy is measured in ``_measure``)."""
    return float((outputs(model, x, batch).argmax(1) == y).float().mean()) if len(x) else 0.0


@torch.inference_mode()
def outputs(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """The model's outputs on ``x``, in batches, as float32 on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    )


def test_score(data: TaskData) -> Callable[[torch.Tensor], float]:
    """Outputs on the test split -> the task's primary metric (accuracy, rmse, micro_f1, or its
    own): what every recipe step and artifact is measured on."""
    metrics, primary = data.metrics_fn(), data.primary_metric()
    return lambda out: float(metrics(out, data.y_test)[primary])
