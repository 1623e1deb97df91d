"""Training and evaluation loops: plain PyTorch, no Ray, no MLflow.

One epoch = one pass over the training split in batches (``batch_size`` = whole split for
full-batch methods): indexed tensors for in-memory tasks, a ``DataLoader`` for dataset tasks. The
loss and the metrics are the task's (``workers.tasks``: cross-entropy and accuracy for
classification, MSE and RMSE for regression, ...). The optimizer step goes through a closure so
line-search (cg) and extragradient methods can re-evaluate the loss; the rest call it once.
"""

from __future__ import annotations

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
    """``(x, y)`` in batches of a seeded random order (indexing: tensors already in memory).

    The order is drawn on the CPU from the trial's generator, so a seed gives the same batches
    on every device and a checkpoint's generator state resumes it; the permutation then moves
    to the data's device once per epoch, and every batch is indexed there (no per-step copy).
    """
    for idx in _index_batches(len(y), batch_size, generator, y.device):
        yield inputs.take(x, idx), y[idx]


def _index_batches(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator).to(device)
    return list(perm.split(batch_size))


def train_batches(
    data: Any, batch_size: int, generator: torch.Generator, device: torch.device | None = None
) -> Iterator[Batch]:
    """One epoch of a task's training split on ``device``: indexed tensors where they lie on the
    device; in-memory tensors left on the host (too large for the device, see
    ``workers.trial.device.resident_task``) batched there and copied through pinned memory; a
    dataset task's ``train_set`` through a shuffling ``DataLoader``. Seeded by ``generator``."""
    if data.in_memory and _on(data, device):
        return shuffled_batches(data.x_train, data.y_train, batch_size, generator)
    if data.in_memory:
        return _host_batches(data, "train", batch_size, device, generator)
    return _loader(data, data.train_set, batch_size, device, generator)


# Evaluation needs no gradients or optimizer state, so a GPU takes far larger batches than
# training: fewer launches and fewer round-trips per split. The CPU gains nothing from them.
EVAL_BATCH_SIZE = {"cuda": 8192}
DEFAULT_EVAL_BATCH_SIZE = 2048


def eval_batch_size(device: torch.device | None) -> int:
    """The evaluation batch size on ``device``: 8192 on CUDA, else 2048."""
    return EVAL_BATCH_SIZE.get(device.type if device else "cpu", DEFAULT_EVAL_BATCH_SIZE)


def eval_batches(
    data: Any, split: str, batch_size: int | None = None, device: torch.device | None = None
) -> Iterator[Batch]:
    """A split (``val`` or ``test``) in order, in batches (default: :func:`eval_batch_size`)."""
    batch_size = batch_size or eval_batch_size(device)
    if data.in_memory and _on(data, device):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        return (
            (inputs.take(x, slice(i, i + batch_size)), y[i : i + batch_size])
            for i in range(0, len(y), batch_size)
        )
    if data.in_memory:
        return _host_batches(data, split, batch_size, device, None)
    return _loader(data, getattr(data, f"{split}_set"), batch_size, device, None)


def _on(data: Any, device: torch.device | None) -> bool:
    return device is None or data.y_train.device == torch.device(device)


class _Rows(torch.utils.data.Dataset):
    """A split's in-memory tensors, read a whole batch of rows per item: the sampler hands over
    an index tensor, so batching stays one indexing operation, not one ``__getitem__`` per row."""

    def __init__(self, x: Inputs, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        return inputs.take(self.x, idx), self.y[idx]


def _host_batches(
    data: Any,
    split: str,
    batch_size: int,
    device: torch.device | None,
    generator: torch.Generator | None,
) -> Iterator[Batch]:
    """Host tensors batched on the host (in the order :func:`shuffled_batches` would give, or
    in order without a generator), pinned and copied to ``device`` without blocking."""
    from torch.utils.data import DataLoader

    device = device or torch.device("cpu")
    y = getattr(data, f"y_{split}")
    if generator is not None:
        order = _index_batches(len(y), batch_size, generator, y.device)
    else:
        order = list(torch.arange(len(y)).split(batch_size))
    # batch_size=None: each sampled item is already a whole batch (see _Rows).
    rows = _Rows(getattr(data, f"x_{split}"), y)
    loader = DataLoader(rows, batch_size=None, sampler=order, pin_memory=device.type == "cuda")
    for xb, yb in loader:
        yield inputs.to(xb, device, non_blocking=True), yb.to(device, non_blocking=True)


CUDA_PREFETCH = 4  # batches each loader worker keeps ready for a GPU trial


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
    elif device.type == "cuda":
        # Workers keep batches queued ahead, so the GPU does not wait on the next one's loading.
        options.setdefault("prefetch_factor", CUDA_PREFETCH)
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
    grad_clip: float | None = None,
    accumulate: int = 1,
) -> EpochResult:
    """One pass over ``batches`` (see :func:`train_batches`), minimising ``loss_fn(out, y)``.

    ``grad_clip`` scales the gradients to at most that total L2 norm before each update;
    ``accumulate`` sums the gradients of that many batches (each loss divided by it) into one
    update, the last update of an epoch taking what is left: ``accumulate: 4`` at batch 16 takes
    the steps of batch 64, for a batch that does not fit in memory. ``steps`` counts updates.

    Each step's loss stays a tensor on the device until the epoch ends: reading it per step
    (``float(loss)``) would make the CPU wait for the GPU at every step, and for small models
    that wait, not the GPU's work, sets the pace.

    Raises:
        TrialDivergedError: the loss became NaN or infinite (the trial fails with this reason);
            checked once, at the end of the epoch, naming the first step it happened at.
    """
    model.train()
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    group: list[Batch] = []

    def update(group: list[Batch]) -> torch.Tensor:
        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            total: torch.Tensor | None = None
            for xb, yb in group:
                loss = loss_fn(inputs.forward(model, xb), yb)
                if l1_penalty:
                    loss = loss + l1_penalty * l1_norm(model)
                (loss / len(group) if len(group) > 1 else loss).backward()
                total = loss.detach() if total is None else total + loss.detach()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            assert total is not None
            return total / len(group) if len(group) > 1 else total

        if needs_closure:
            return optimizer.step(closure)  # type: ignore[arg-type,return-value]
        loss = closure()
        optimizer.step()
        return loss

    for xb, yb in batches:
        if adversary is not None:  # validated: one input tensor
            xb = adversary(model, inputs.parts(xb)[0], yb)
        group.append((xb, yb))
        if len(group) < accumulate:
            continue
        _step(update(group), group, losses, sizes, schedule)
        group = []
    if group:
        _step(update(group), group, losses, sizes, schedule)
    return _epoch_result(losses, sizes)


def _step(
    loss: Any, group: list[Batch], losses: list[torch.Tensor], sizes: list[int], schedule: Any
) -> None:
    if schedule is not None:
        schedule.step()
    yb = group[-1][1]
    # as_tensor: a closure optimizer may hand back the loss as a float.
    losses.append(torch.as_tensor(loss, device=yb.device).detach().reshape(()))
    sizes.append(sum(len(y) for _, y in group))


def _epoch_result(losses: list[torch.Tensor], sizes: list[int]) -> EpochResult:
    """The epoch's mean loss over examples: the one read of the device per epoch."""
    if not losses:
        return EpochResult(0.0, 0)
    per_step = torch.stack([t.float() for t in losses]).cpu().double()
    bad = (~torch.isfinite(per_step)).nonzero()
    if len(bad):
        step = int(bad[0, 0])
        raise TrialDivergedError(
            f"training loss became {float(per_step[step])} at step {step + 1} of the epoch"
        )
    weights = torch.tensor(sizes, dtype=torch.float64)
    return EpochResult(float((per_step * weights).sum() / weights.sum()), len(losses))


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: Loss,
    metrics_fn: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]],
) -> dict[str, float]:
    """``{"loss": mean loss, **metrics}`` of ``model`` over a split, in eval mode.

    The metrics see the whole split's outputs and targets at once (F1 and R^2 are not means of
    per-batch values). Outputs and the loss sum stay on the device until the split ends, then
    come to the CPU in one copy: no wait for the GPU per batch.
    """
    model.eval()
    outs, ys, losses, n = [], [], [], 0
    for xb, yb in batches:
        out = inputs.forward(model, xb).float()
        losses.append(torch.as_tensor(loss_fn(out, yb)).float() * len(yb))
        n += len(yb)
        outs.append(out)
        ys.append(yb)
    if not n:
        return {"loss": float("nan")}
    loss_sum = float(torch.stack(losses).sum())
    return {"loss": loss_sum / n, **metrics_fn(torch.cat(outs).cpu(), torch.cat(ys).cpu())}


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of a classifier on in-memory ``(x, y)``, summed on
    the device and read once (batches of :func:`eval_batch_size` by default)."""
    model.eval()
    batch_size = batch_size or eval_batch_size(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size]).float()
        yb = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    return float(loss_sum) / len(x), int(correct) / len(x)
