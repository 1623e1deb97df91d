"""Tasks (data sets) by name: ``digits``, ``fashion-mnist``, or a user's ``module:function``.

A task builder takes the split seed and returns a :class:`TaskData` with train/val/test tensors.
"""

from __future__ import annotations

from workers.tasks._base import TaskData, load_task, split_arrays, task_names, TASKS
from workers.tasks import _digits, _fashion_mnist  # noqa: F401  (registers the built-ins)

__all__ = ["TaskData", "load_task", "split_arrays", "task_names", "TASKS"]
