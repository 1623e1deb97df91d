"""A model's inputs: one tensor, or a tuple of tensors (several inputs, one row per example).

A model that takes several tensors (a recommender's user and item ids, tabular features beside a
category id, text beside numbers) is called as ``model(*inputs)``; its task gives each split's
``x`` as a tuple of tensors with the same number of rows, and ``input_shape`` as a tuple of
shapes, one per tensor. Everything that batches, moves, exports or measures inputs goes through
these helpers, so one tensor and several are the same code path.

Example:
    >>> import torch
    >>> x = (torch.randn(5, 3), torch.arange(5))
    >>> rows(x), [tuple(t.shape) for t in take(x, slice(0, 2))], names(x)
    (5, [(2, 3), (2,)], ['input_0', 'input_1'])
    >>> rows(torch.zeros(4, 2)), names(torch.zeros(4, 2))
    (4, ['input'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from tracking import keys

Inputs = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # noqa: UP007 - a runtime alias


def is_multi(x: Any) -> bool:
    """Whether ``x`` is several input tensors (a tuple or list of them)."""
    return isinstance(x, (tuple, list))


def parts(x: Inputs) -> tuple[torch.Tensor, ...]:
    """The tensors of ``x``, one or several."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _like(x: Inputs, tensors: Sequence[Any]) -> Any:
    return tuple(tensors) if is_multi(x) else tensors[0]


def rows(x: Inputs) -> int:
    """Examples in ``x`` (every tensor has as many)."""
    return len(parts(x)[0])


def take(x: Inputs, index: Any) -> Inputs:
    """The rows ``index`` (a slice, an index tensor) of every tensor of ``x``."""
    return _like(x, [t[index] for t in parts(x)])


def to(x: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    return _like(x, [t.to(device, non_blocking=non_blocking) for t in parts(x)])


def cat(batches: Sequence[Inputs]) -> Inputs:
    """Batches of inputs joined row-wise."""
    return _like(batches[0], [torch.cat(ts) for ts in zip(*map(parts, batches), strict=True)])


def stack(examples: Sequence[Inputs]) -> Inputs:
    """Single examples (a dataset's items) stacked into one batch."""
    return _like(examples[0], [torch.stack(ts) for ts in zip(*map(parts, examples), strict=True)])


def tile(x: Inputs, n: int) -> Inputs:
    """The first ``n`` rows of ``x``, repeated when it has fewer."""
    reps = -(-n // rows(x))
    return take(_like(x, [torch.cat([t] * reps) for t in parts(x)]), slice(0, n))


def detached(x: Inputs) -> Inputs:
    """A compact CPU copy of ``x``, as a checkpoint stores its example inputs.

    A copy, not a view: ``torch.save`` writes a view's whole storage, and four rows sliced from
    a test split would carry all of it into every checkpoint (31 MB for Fashion-MNIST's).
    """
    return _like(
        x, [t.detach().cpu().clone(memory_format=torch.contiguous_format) for t in parts(x)]
    )


def forward(model: nn.Module, x: Inputs) -> torch.Tensor:
    """``model`` on ``x``: ``model(x)``, or ``model(*x)`` for several tensors."""
    return model(*x) if is_multi(x) else model(x)


def names(x: Any) -> list[str]:
    """The exported model's input names: ``input`` for one tensor, ``input_0``, ``input_1``, ...
    for several (the names a served model's request uses)."""
    return keys.input_names(len(x) if is_multi(x) else 1)


def arrays(x: Inputs) -> dict[str, np.ndarray]:
    """``x`` as ONNX Runtime's feed: input name → contiguous numpy array in its own dtype."""
    return {
        n: np.ascontiguousarray(t.detach().cpu().numpy())
        for n, t in zip(names(x), parts(x), strict=True)
    }


def dtype_name(x: Inputs) -> str | list[str]:
    """The dtype of each input, as ``arch.json`` records it (``float32``, ``int64``)."""
    found = [str(t.dtype).removeprefix("torch.") for t in parts(x)]
    return found if is_multi(x) else found[0]


def is_shape(shape: Any) -> bool:
    """Whether ``shape`` is one example's shape: a sequence of positive ints."""
    return isinstance(shape, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    )


def shapes(input_shape: Any) -> list[tuple[int, ...]] | None:
    """The per-tensor shapes an ``input_shape`` declares: ``[(4,)]`` for ``(4,)``, each shape of a
    several-input task's ``((9,), (1,))``; None when it is neither."""
    if is_shape(input_shape):
        return [tuple(input_shape)]
    if (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) > 1
        and all(is_shape(s) for s in input_shape)
    ):
        return [tuple(s) for s in input_shape]
    return None


def is_multi_shape(input_shape: Any) -> bool:
    """Whether ``input_shape`` declares several input tensors."""
    found = shapes(input_shape)
    return found is not None and not is_shape(input_shape)


def as_shape(input_shape: Any) -> tuple:
    """``input_shape`` as tuples, also after a JSON round trip (``[[9], []]`` → ``((9,), ())``)."""
    if is_multi_shape(input_shape):
        return tuple(tuple(s) for s in input_shape)
    return tuple(input_shape)


def json_shape(input_shape: Any) -> list:
    """``input_shape`` as JSON lists, one list per tensor for several inputs."""
    return (
        [list(s) for s in as_shape(input_shape)]
        if is_multi_shape(input_shape)
        else list(input_shape)
    )
