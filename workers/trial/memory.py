"""How much memory a trial needs, measured before the sweep: a few real training steps of the
trial's model on its task, so ``resources`` can pack trials onto a GPU or a node without running
out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers import inputs
from workers.optimizers import OPTIMIZERS
from workers.tasks import load_task
from workers.trial.device import task_bytes, task_on
from workers.trial.loop import (
    batch_size_for,
    train_batches,
    train_epoch,
)

# A checkpoint is one file, state.pt, so that object storage writes one object per checkpoint
# (which appears whole or not at all). It is weights-only (tensors and plain containers, loadable
# with weights_only=True): the model, the optimizer, the schedule, the RNG, a few of the task's
# inputs (``example``), and as JSON (``podium``) the manifest: the size of every other file in
# the checkpoint (a finished trial's artifacts, see checkpoint_problem), the trial's facts
# (``trial``: trial_meta), its per-epoch history and, in its last checkpoint, its final report.
# A folder can hold a copy cut short: state.pt is a zip file whose directory comes last, so a
# short one does not open.
from workers.trial.trainable import setup_trial


@dataclass(frozen=True)
class TrialMemory:
    """One trial's memory, as ``resources.gpu: auto`` needs it (:func:`measure_trial_memory`).

    Attributes:
        peak_bytes: the trial's peak: its task's data, model, gradients, optimizer state and one
            training batch's activations.
        card_bytes: total memory of the GPU it was measured on; None where there is none.
        how: ``measured on <card>`` or ``estimated on the CPU`` (see :func:`estimate_peak`).
    """

    peak_bytes: int
    card_bytes: int | None
    how: str


PROBE_STEPS = 2  # the first step creates the optimizer's state; the second runs with it


def measure_trial_memory(trial: dict[str, Any]) -> TrialMemory:
    """A trial's peak memory: measured on this process's GPU when it has one (a few real
    training steps, the allocator's peak), else estimated on the CPU.

    Args:
        trial: a concrete trial spec, as :func:`run_trial` gets it.

    Returns:
        The :class:`TrialMemory`.
    """
    training, entry = trial["training"], OPTIMIZERS.get(trial["optimizer"]["name"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    data = task_on(device, load_task(trial["task"], training["seed"]))
    state = setup_trial(trial, data, device)
    batch_size = batch_size_for(entry.batch_mode, training["batch_size"], data.split_size("train"))
    first = next(iter(train_batches(data, batch_size, state.generator, device)))
    activations = _activation_bytes(state.model, first[0])
    # In float32 even where the trial will use bf16 autocast: the larger of the two, to be safe.
    for _ in range(PROBE_STEPS):
        train_epoch(
            state.model,
            state.optimizer,
            [first],
            loss_fn=data.loss_fn(),
            needs_closure=entry.needs_closure,
        )
    if cuda:
        props = torch.cuda.get_device_properties(device)
        peak = torch.cuda.max_memory_allocated(device)
        return TrialMemory(peak, props.total_memory, f"measured on {props.name}")
    params = _tensor_bytes(state.model.parameters())
    optimizer = _tensor_bytes(_optimizer_tensors(state.optimizer))
    peak = estimate_peak(task_bytes(data), params, optimizer, activations)
    return TrialMemory(peak, None, "estimated on the CPU")


def estimate_peak(
    data_bytes: int, param_bytes: int, optimizer_bytes: int, activation_bytes: int
) -> int:
    """A trial's peak GPU memory from what a CPU can count: the data, the weights and as much
    again for their gradients, the optimizer's state, and a batch's activations twice (kept for
    the backward pass, then their gradients). It leaves out the allocator's rounding and cuDNN's
    workspaces, which :func:`workers.trial.device.gpu_share`'s margin is for.

    Example:
        >>> estimate_peak(100, 10, 20, 5)
        150
    """
    return data_bytes + 2 * param_bytes + optimizer_bytes + 2 * activation_bytes


def _activation_bytes(model: nn.Module, xb: inputs.Inputs) -> int:
    """Bytes of every module output in one forward pass of the batch ``xb``."""
    total = 0

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            inputs.forward(model, xb)
    finally:
        for h in handles:
            h.remove()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
