"""Training and evaluation loops: plain PyTorch, no Ray, no MLflow.

One epoch = one pass over the training split in batches (``batch_size`` = whole split for
full-batch methods): indexed tensors for in-memory tasks, a ``DataLoader`` for dataset tasks. The
loss and the metrics are the task's (``workers.tasks``: cross-entropy and accuracy for
classification, MSE and RMSE for regression, ...). The optimizer step goes through a closure so
line-search (cg) and extragradient methods can re-evaluate the loss; the rest call it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers import inputs
from workers.errors import TrialDivergedError
from workers.inputs import Inputs

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


Batch = tuple[Inputs, torch.Tensor]  # inputs (one tensor or several), targets
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shuffled_batches(
    x: Inputs, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """``(x, y)`` in batches of a seeded random order (indexing: tensors already in memory)."""
    perm = torch.randperm(len(y), generator=generator).to(y.device)
    for start in range(0, len(y), batch_size):
        idx = perm[start : start + batch_size]
        yield inputs.take(x, idx), y[idx]


def train_batches(
    data: Any, batch_size: int, generator: torch.Generator, device: torch.device | None = None
) -> Iterator[Batch]:
    """One epoch of a task's training split: indexed tensors, or its ``train_set`` through a
    shuffling ``DataLoader`` (seeded by ``generator``)."""
    if data.in_memory:
        return shuffled_batches(data.x_train, data.y_train, batch_size, generator)
    return _loader(data, data.train_set, batch_size, device, generator)


def eval_batches(
    data: Any, split: str, batch_size: int = 2048, device: torch.device | None = None
) -> Iterator[Batch]:
    """A split (``val`` or ``test``) in order, in batches."""
    if data.in_memory:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        return (
            (inputs.take(x, slice(i, i + batch_size)), y[i : i + batch_size])
            for i in range(0, len(y), batch_size)
        )
    return _loader(data, getattr(data, f"{split}_set"), batch_size, device, None)


def _loader(
    data: Any,
    dataset: Any,
    batch_size: int,
    device: torch.device | None,
    generator: torch.Generator | None,
) -> Iterator[Batch]:
    from torch.utils.data import DataLoader

    device = device or torch.device("cpu")
    options = dict(data.loader)
    if not options.get("num_workers"):
        options.pop("prefetch_factor", None)  # only valid with worker processes
        options.pop("persistent_workers", None)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        # Page-locked host memory lets the copy to a GPU overlap the next batch's loading.
        pin_memory=device.type == "cuda",
        **options,
    )
    for xb, yb in loader:
        # The default collate makes a list of an item's several input tensors.
        xb = tuple(xb) if inputs.is_multi(xb) else xb
        yield inputs.to(xb, device, non_blocking=True), yb.to(device, non_blocking=True)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    loss_fn: Loss = nn.functional.cross_entropy,
    needs_closure: bool = False,
    l1_penalty: float = 0.0,
    schedule: Any = None,
    adversary: Adversary | None = None,
) -> EpochResult:
    """One pass over ``batches`` (see :func:`train_batches`), minimising ``loss_fn(out, y)``.

    Raises:
        TrialDivergedError: the loss became NaN or infinite (the trial fails with this reason).
    """
    model.train()
    total, seen, steps = 0.0, 0, 0
    for xb, yb in batches:
        if adversary is not None:  # validated: one input tensor
            xb = adversary(model, inputs.parts(xb)[0], yb)

        def closure(xb: Inputs = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(inputs.forward(model, xb), yb)
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
        total += value * len(yb)
        seen += len(yb)
        steps += 1
    return EpochResult(total / max(seen, 1), steps)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: Loss,
    metrics_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]],
) -> dict[str, float]:
    """``{"loss": mean loss, **metrics}`` of ``model`` over a split, in eval mode.

    The metrics see the whole split's outputs and targets at once (F1 and R^2 are not means of
    per-batch values); the outputs are gathered on the CPU.
    """
    model.eval()
    outs, ys, loss_sum, n = [], [], 0.0, 0
    for xb, yb in batches:
        out = inputs.forward(model, xb).float()
        loss_sum += float(loss_fn(out, yb)) * len(yb)
        n += len(yb)
        outs.append(out.cpu())
        ys.append(yb.cpu())
    if not n:
        return {"loss": float("nan")}
    return {"loss": loss_sum / n, **metrics_fn(torch.cat(outs), torch.cat(ys))}


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of a classifier on in-memory ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size])
        yb = y[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(x), correct / len(x)
