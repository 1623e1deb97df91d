"""Pick the torch device for one trial from what Ray assigned to it.

Ray decides placement: a trial that asked for ``gpu: 0.5`` runs on a node with a GPU and finds
``CUDA_VISIBLE_DEVICES`` set to its GPU, so ``cuda:0`` is always *its* GPU. A trial that asked for
``tpu: 1`` holds Ray's ``TPU`` resource and uses XLA when ``torch_xla`` is importable. Everything
else trains on the CPU. When an accelerator was assigned but cannot be used (the CPU build of
torch on a GPU node, no ``torch_xla`` on a TPU host) the trial still runs, on the CPU, and the
reason is recorded: a sweep should not die because one node is misconfigured, and the MLflow run
says exactly what happened.

The decision is a pure function (:func:`choose_device`); :func:`pick_device` gathers the facts
from Ray and torch and applies it.

Example:
    >>> choose_device({"CPU": 1.0}, cuda_available=False, xla_available=False)
    ('cpu', 'no accelerator assigned')
    >>> choose_device({"CPU": 1.0, "GPU": 0.5}, cuda_available=False, xla_available=False)[0]
    'cpu'
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

DeviceKind = Literal["cpu", "cuda", "xla"]
TPU_RESOURCE = "TPU"  # Ray's name for TPU chips (a custom resource on a simulated node)


def choose_device(
    assigned: dict[str, float], cuda_available: bool, xla_available: bool
) -> tuple[DeviceKind, str]:
    """Decide the device kind from Ray's assignment and what this process can use.

    Args:
        assigned: Ray's resources for this trial, e.g. ``{"CPU": 1.0, "GPU": 0.5}``.
        cuda_available: ``torch.cuda.is_available()`` in the trial's process.
        xla_available: ``torch_xla`` imports and yields a device.

    Returns:
        ``(kind, reason)``; the reason says why, above all when an accelerator was not used.
    """
    gpus, tpus = assigned.get("GPU", 0.0), assigned.get(TPU_RESOURCE, 0.0)
    if gpus > 0:
        if cuda_available:
            return "cuda", f"Ray assigned {gpus:g} GPU"
        return "cpu", (
            f"Ray assigned {gpus:g} GPU but torch.cuda.is_available() is False "
            f"(torch {torch.__version__} has no usable CUDA here); fell back to CPU"
        )
    if tpus > 0:
        if xla_available:
            return "xla", f"Ray assigned {tpus:g} TPU"
        return "cpu", (
            f"Ray assigned {tpus:g} TPU but torch_xla is not importable "
            "(pip install torch_xla on TPU hosts); fell back to CPU"
        )
    return "cpu", "no accelerator assigned"


@dataclass(frozen=True)
class Device:
    """Where one trial trains.

    Attributes:
        torch_device: what tensors and the model are moved to.
        kind: ``cpu``, ``cuda`` or ``xla`` (what ``podium.device`` starts with).
        node: ``hostname/ray-node-name`` (Ray's node name defaults to the node's IP), recorded as
            ``podium.node``.
        node_id: Ray's node id, or None outside Ray.
        reason: why this device; names the fallback when an assigned accelerator was unusable.
        amp: mixed precision (bfloat16 autocast) is on; only ever on CUDA.
        name: the accelerator's product name (``NVIDIA H100 80GB HBM3``), or ``cpu``.
        share: the fraction of the GPU Ray assigned (``resources.gpu``); below 1, the trial's
            CUDA allocations are capped at that fraction of the card (see :func:`pick_device`).
    """

    torch_device: torch.device
    kind: DeviceKind
    node: str
    node_id: str | None
    reason: str
    amp: bool = False
    name: str = "cpu"
    share: float = 1.0

    @property
    def label(self) -> str:
        """What ``podium.device`` records: ``cuda:0 (NVIDIA H100 80GB HBM3)``, with the share of
        a packed GPU (``cuda:0 (NVIDIA H100 80GB HBM3, 0.25 GPU)``), or ``cpu``."""
        if self.kind == "cpu":
            return "cpu"
        if self.kind == "cuda" and self.share < 1:
            return f"{self.torch_device} ({self.name}, {self.share:g} GPU)"
        return f"{self.torch_device} ({self.name})"

    @contextlib.contextmanager
    def mixed_precision(self, model: torch.nn.Module) -> Iterator[None]:
        """While inside, ``model``'s forward runs under bf16 autocast (a no-op unless ``amp``).

        Only the forward pass is autocast and its logits come back as float32, so the loss and
        the backward pass run outside autocast, as PyTorch recommends; the training loop and the
        optimizers need no change. Leaving restores the plain forward (export and measurement
        after training see an ordinary float32 model).
        """
        if not self.amp:
            yield
            return
        plain = model.forward

        # One autocast region per forward call, never one around many steps: autocast caches the
        # bf16 copy of each weight until its region ends, so a region spanning optimizer steps
        # would keep running the stale weights (measured on an H200: a whole-epoch region left
        # Fashion-MNIST at 10-49% accuracy where float32 reached 85-92%).
        def forward(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16):
                out = plain(*args, **kwargs)
            return out.float() if isinstance(out, torch.Tensor) else out

        model.forward = forward  # type: ignore[method-assign]
        try:
            yield
        finally:
            del model.forward  # the instance attribute; the class's forward shows again

    def sync(self) -> None:
        """End of an optimizer step: XLA builds graphs lazily and runs them at ``mark_step``."""
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            xm.mark_step()


def pick_device(
    amp: bool = False, cudnn_benchmark: bool = False, assigned: dict[str, float] | None = None
) -> Device:
    """The device for the calling trial, from Ray's assignment (read here when not given).

    Args:
        amp: use bfloat16 autocast on CUDA (ignored, with the reason, elsewhere or without bf16).
        cudnn_benchmark: let cuDNN autotune convolution algorithms (fixed input shapes: a win).
        assigned: the trial's resources; by default Ray's runtime context (empty outside Ray).

    Returns:
        The :class:`Device`; see ``reason`` for why.

    Example:
        >>> pick_device(assigned={"CPU": 1.0}).kind
        'cpu'
    """
    assigned = _ray_assigned() if assigned is None else assigned
    kind, reason = choose_device(assigned, torch.cuda.is_available(), _xla_available(assigned))
    node, node_id = _node()
    if kind == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        use_amp = amp and torch.cuda.is_bf16_supported()
        if amp and not use_amp:
            reason += "; amp off: this GPU has no bfloat16"
        share = memory_cap(assigned.get("GPU", 1.0))
        if share is not None:
            # Ray's fractions are bookkeeping only: without a cap, one trial's caching allocator
            # could take the whole card and make the trials beside it fail out of memory.
            torch.cuda.set_per_process_memory_fraction(share, 0)
            reason += f"; memory capped at {share:g} of the card"
        return Device(
            torch.device("cuda", 0),
            "cuda",
            node,
            node_id,
            reason,
            use_amp,
            torch.cuda.get_device_name(0),
            share or 1.0,
        )
    if kind == "xla":
        return Device(_xla_device(), "xla", node, node_id, reason, name="TPU")
    if amp:
        reason += "; amp off: mixed precision is used on CUDA only"
    return Device(torch.device("cpu"), "cpu", node, node_id, reason)


def memory_cap(gpus: float) -> float | None:
    """The fraction of the card a trial assigned ``gpus`` GPUs may allocate: its share when it
    shares a GPU (``0 < gpus < 1``), else None (a whole GPU, or several: no cap)."""
    return gpus if 0 < gpus < 1 else None


# The shares ``resources.gpu: auto`` picks from. Not below 1/8: each trial process holds its own
# CUDA context (a few hundred MB, outside the allocator's cap) and the GPU time-slices between
# processes, so past eight small trials per card the overhead grows faster than the packing gains.
GPU_SHARES = (0.125, 0.25, 0.5, 1.0)
DEFAULT_MARGIN = 0.25  # headroom on the probe's peak: allocator fragmentation, later batches
CUDA_CONTEXT_BYTES = 512 * 1024**2  # per process, outside set_per_process_memory_fraction


def gpu_share(
    peak_bytes: int, card_bytes: int, margin: float = DEFAULT_MARGIN
) -> tuple[float, str]:
    """The smallest share of one GPU that holds one trial: what ``resources.gpu: auto`` asks for.

    Args:
        peak_bytes: one trial's measured (or estimated) peak memory: its data on the device,
            model, gradients, optimizer state and a training batch's activations.
        card_bytes: the GPU's total memory.
        margin: headroom on ``peak_bytes``, as a fraction (0.25: a quarter more).

    Returns:
        ``(share, reason)``: one of :data:`GPU_SHARES` and why. A trial that does not fit even a
        whole card gets 1 and a reason that says so (it may still run, or fail out of memory).

    Example:
        >>> gpu_share(2 * 1024**3, 80 * 1024**3)[0]
        0.125
        >>> gpu_share(30 * 1024**3, 80 * 1024**3)[0]
        0.5
    """
    need = peak_bytes * (1 + margin) + CUDA_CONTEXT_BYTES
    gib = f"{need / 1024**3:.2f} GiB per trial (peak {peak_bytes / 1024**3:.2f} GiB"
    gib += f" + {margin:.0%} + CUDA context) on a {card_bytes / 1024**3:.1f} GiB card"
    for share in GPU_SHARES:
        if need <= share * card_bytes:
            return share, f"{gib}: {round(1 / share)} trials per GPU"
    return 1.0, f"{gib}: does not fit even a whole GPU; one trial per GPU"


def _ray_assigned() -> dict[str, float]:
    try:
        import ray

        if not ray.is_initialized():
            return {}
        return dict(ray.get_runtime_context().get_assigned_resources())
    except Exception:  # outside a Ray worker there is simply nothing assigned
        return {}


def _xla_available(assigned: dict[str, float]) -> bool:
    if assigned.get(TPU_RESOURCE, 0.0) <= 0:
        return False  # never import torch_xla (slow, grabs the TPU) for a trial without a TPU
    try:
        _xla_device()
        return True
    except Exception:
        return False


def _xla_device() -> torch.device:
    import torch_xla.core.xla_model as xm

    return xm.xla_device()


def _node() -> tuple[str, str | None]:
    """``hostname/ray-node-name`` and Ray's node id; the name tells simulated nodes apart."""
    host = socket.gethostname()
    try:
        import ray

        if not ray.is_initialized():
            return host, None
        node_id = ray.get_runtime_context().get_node_id()
        name = next(
            (
                n.get("NodeName") or n.get("NodeManagerAddress")
                for n in ray.nodes()
                if n.get("NodeID") == node_id
            ),
            None,
        )
        return f"{host}/{name}" if name else host, node_id
    except Exception:
        return host, None


def move(device: Device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` on ``device``; already-there tensors are returned as they are (no copy)."""
    return tuple(t.to(device.torch_device) for t in tensors)


def task_on(device: torch.device, data: Any) -> Any:
    """A task's splits (``workers.tasks.TaskData``) on ``device``: the same object when they are
    already there (CPU trials pay nothing), else a copy, moved once per trial rather than per
    batch."""
    from workers import inputs

    if not data.in_memory or data.y_train.device == device:
        return data  # a dataset task's batches move as its DataLoader yields them
    moved = {
        f: inputs.to(getattr(data, f), device)
        for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    }
    return data.with_parts(**moved)


# A task's tensors may take at most half of a trial's device memory: the rest is for the model,
# its gradients and optimizer state, and the batches' activations.
DATA_FRACTION = 0.5


def data_fits(data_bytes: int, budget_bytes: int, fraction: float = DATA_FRACTION) -> bool:
    """Whether a task's in-memory tensors (``data_bytes``) should live on a device whose trial
    may use ``budget_bytes``; the rest are batched on the host and copied through pinned memory.

    Example:
        >>> data_fits(220 * 1024**2, 10 * 1024**3), data_fits(8 * 1024**3, 10 * 1024**3)
        (True, False)
    """
    return data_bytes <= fraction * budget_bytes


def task_bytes(data: Any) -> int:
    """Bytes of a task's in-memory splits (0 for a dataset task: its batches are read lazily)."""
    from workers import inputs

    if not data.in_memory:
        return 0
    splits = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    return sum(t.numel() * t.element_size() for f in splits for t in inputs.parts(getattr(data, f)))


def device_budget(device: Device) -> int | None:
    """Bytes the trial may allocate on its GPU (its share of the card); None off CUDA, where the
    task's tensors are already in the memory the trial computes from."""
    if device.kind != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device.torch_device).total_memory * device.share)


# key -> the task's data as the trials of this process use it (on the device when it fits).
_resident: dict[Hashable, Any] = {}


def resident_task(device: Device, key: Hashable, load: Callable[[], Any]) -> Any:
    """A task's data where the trial trains, loaded and moved once per process.

    A reused Ray actor runs trial after trial of one sweep: they share one copy on the device
    instead of each decoding the task and copying it over again. ``key`` names the task (its
    spec and split seed); with the device it keys the copy, and a new key drops the old copy
    first, so one process never holds two tasks' data on its GPU.

    Args:
        device: the trial's device (:func:`pick_device`).
        key: what identifies the task's data, e.g. ``(task name, seed)``.
        load: loads the task (``workers.tasks.load_task``) when no copy is kept.

    Returns:
        The ``TaskData``: moved to the device when its tensors fit the trial's share
        (:func:`data_fits`); else as loaded, and batches are copied as they are needed.
    """
    full_key = (key, str(device.torch_device))
    if full_key in _resident:
        return _resident[full_key]
    _resident.clear()
    data = load()
    budget = device_budget(device)
    if budget is None or data_fits(task_bytes(data), budget):
        data = task_on(device.torch_device, data)
    _resident[full_key] = data
    return data
