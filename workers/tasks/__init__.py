"""Tasks (data sets) by name: ``digits``, ``fashion-mnist``, or a user's ``module:function``.

A task builder takes the split seed and returns a :class:`TaskData` with train/val/test tensors.
"""

from __future__ import annotations

from workers.tasks import _digits, _fashion_mnist  # noqa: F401  (registers the built-ins)
from workers.tasks._base import TASKS, TaskData, load_task, split_arrays, task_names

__all__ = ["TaskData", "load_task", "split_arrays", "task_names", "TASKS"]
