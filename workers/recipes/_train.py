"""The small training loop recipe steps share: fine-tuning after pruning, training a student.

Recipes train with Adam on minibatches whatever optimizer the trial searched: a step's job is to
recover accuracy after a change, not to compare optimizers, and one fixed loop keeps steps
comparable across trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from workers import inputs
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
    aux: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str = "cpu",
) -> float:
    """One pass over the training split in a seeded random order; returns the mean loss.

    ``after_step`` runs after every optimizer step: pruning uses it to re-apply masks so pruned
    weights stay exactly zero while the rest learn. ``loss_fn`` defaults to the task's loss.
    ``aux`` is a tensor of per-row values (in memory) or a function of a batch's inputs (a task
    read through a DataLoader, whose batches have no row numbers).
    """
    loss_fn = loss_fn or task_loss(data)
    if not data.in_memory:
        return _train_streamed(model, data, opt, batch_size, generator, loss_fn, after_step, aux)
    model.train()
    n = len(data.x_train)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
        opt.zero_grad(set_to_none=True)
        extra = aux(x) if callable(aux) else aux[idx].to(device) if aux is not None else None
        loss = loss_fn(model, x, y, extra)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        total += loss.item() * len(idx)
    model.eval()
    return total / n


def _train_streamed(
    model: nn.Module,
    data: TaskData,
    opt: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    loss_fn: LossFn,
    after_step: Callable[[], None] | None,
    aux: Any,
) -> float:
    """:func:`train_epoch` over a dataset task's training ``Dataset``, batch by batch through
    its ``DataLoader`` (shuffled from ``generator``), on the CPU where recipes run."""
    from workers.trial.loop import train_batches

    model.train()
    total, n = 0.0, 0
    for x, y in train_batches(data, batch_size, generator):
        opt.zero_grad(set_to_none=True)
        extra = aux(x) if callable(aux) else None
        loss = loss_fn(model, x, y, extra)  # type: ignore[arg-type]  # recipes take one tensor
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        total, n = total + loss.item() * len(y), n + len(y)
    model.eval()
    return total / max(n, 1)


def calibration_inputs(data: TaskData, n: int, seed: int = 0) -> Any:
    """Up to ``n`` training inputs for static int8's calibration: the first rows in memory, or
    a seeded random draw of batches from a dataset task's training ``Dataset``."""
    if data.in_memory:
        return data.x_train[:n]
    from workers.trial.loop import train_batches

    drawn: list[Any] = []
    for x, _ in train_batches(data, 64, torch.Generator().manual_seed(seed)):
        drawn.append(x)
        if sum(len(b) for b in drawn) >= n:
            break
    return inputs.cat(drawn)[:n]


def for_recipe(data: TaskData) -> TaskData:
    """A dataset task as recipes measure it: its test split read once into tensors (every step
    is scored on all of its outputs); training stays a ``Dataset``, read batch by batch."""
    if data.in_memory or isinstance(data.splits.get("test"), tuple):
        return data
    from workers.trial.loop import eval_batches

    xs, ys = zip(*eval_batches(data, "test"), strict=True)
    x, y = inputs.cat(list(xs)), torch.cat(list(ys))
    splits = {**data.splits, "test": (x, y)}
    pipe = data.pipeline
    if pipe is not None:  # no front: the raw inputs are the model's
        pipe = dataclasses.replace(pipe, raw_test=(x, y))
    return dataclasses.replace(data, splits=splits, pipeline=pipe)


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
