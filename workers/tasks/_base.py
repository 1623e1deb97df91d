from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workers.errors import WorkerError
from workers.registry import Registry, is_plugin_ref, load_plugin

TASKS: Registry[Callable[[int], TaskData]] = Registry("task")


@dataclass(frozen=True)
class TaskData:
    """One task's splits, ready for training.

    Attributes:
        name: the task's name as the spec gives it.
        x_train, y_train, x_val, y_val, x_test, y_test: float32 inputs shaped
            ``(n, *input_shape)`` and int64 labels.
        input_shape: shape of one example, e.g. ``(64,)`` or ``(1, 28, 28)``.
        num_classes: number of labels.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int


def split_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> TaskData:
    """Deterministic, stratified train/val/test split of ``x, y`` from ``seed``.

    If ``test`` is given (a data set with an official test split), it is used as the test split
    and only validation is carved out of ``x``.
    """
    x = x.astype(np.float32, copy=False)
    y = y.astype(np.int64, copy=False)
    rng = np.random.default_rng(seed)
    if test is None:
        rest, held = stratified_split(y, test_fraction, rng)
        x, x_te, y, y_te = x[rest], x[held], y[rest], y[held]
        val_size = val_fraction / (1.0 - test_fraction)
    else:
        x_te, y_te = test[0].astype(np.float32, copy=False), test[1].astype(np.int64, copy=False)
        val_size = val_fraction
    rest, held = stratified_split(y, val_size, rng)
    x_tr, x_va, y_tr, y_va = x[rest], x[held], y[rest], y[held]
    t = torch.from_numpy
    return TaskData(
        name=name,
        x_train=t(np.ascontiguousarray(x_tr)),
        y_train=t(np.ascontiguousarray(y_tr)),
        x_val=t(np.ascontiguousarray(x_va)),
        y_val=t(np.ascontiguousarray(y_va)),
        x_test=t(np.ascontiguousarray(x_te)),
        y_test=t(np.ascontiguousarray(y_te)),
        input_shape=tuple(x_tr.shape[1:]),
        num_classes=int(max(y_tr.max(), y_va.max(), y_te.max()) + 1),
    )


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, held)``: ``fraction`` of each class held out at random, both shuffled.

    Plain numpy on purpose: scikit-learn's ``train_test_split`` costs a ~1.5 s import in every
    new trial process, for a few lines of work.
    """
    held = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held.append(members[: int(round(fraction * len(members)))])
    held_idx = np.concatenate(held)
    keep = np.ones(len(y), dtype=bool)
    keep[held_idx] = False
    return rng.permutation(np.flatnonzero(keep)), rng.permutation(held_idx)


def task_names() -> list[str]:
    return TASKS.names()


@functools.lru_cache(maxsize=4)
def load_task(name: str, seed: int) -> TaskData:
    """Load a task by registry name or ``module:function``; cached per process.

    The cache matters: a reused Ray actor runs many trials, and Fashion-MNIST takes a second to
    decode.

    Raises:
        UnknownNameError: ``name`` is neither registered nor a plug-in reference.
        WorkerError: a plug-in did not return a TaskData.
    """
    builder = load_plugin(name) if is_plugin_ref(name) else TASKS.get(name)
    data = builder(seed)
    if not isinstance(data, TaskData):
        raise WorkerError(f"task {name!r} returned {type(data).__name__}, not TaskData")
    return data
