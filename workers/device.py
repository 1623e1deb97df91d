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
from collections.abc import Iterator
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
    """

    torch_device: torch.device
    kind: DeviceKind
    node: str
    node_id: str | None
    reason: str
    amp: bool = False
    name: str = "cpu"

    @property
    def label(self) -> str:
        """What ``podium.device`` records, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu``."""
        if self.kind == "cpu":
            return "cpu"
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
        return Device(
            torch.device("cuda", 0),
            "cuda",
            node,
            node_id,
            reason,
            use_amp,
            torch.cuda.get_device_name(0),
        )
    if kind == "xla":
        return Device(_xla_device(), "xla", node, node_id, reason, name="TPU")
    if amp:
        reason += "; amp off: mixed precision is used on CUDA only"
    return Device(torch.device("cpu"), "cpu", node, node_id, reason)


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
    import dataclasses

    from workers import inputs

    if not data.in_memory or data.y_train.device == device:
        return data  # a dataset task's batches move as its DataLoader yields them
    moved = {
        f: inputs.to(getattr(data, f), device)
        for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    }
    return dataclasses.replace(data, **moved)
