"""Tasks (data sets) by name: built-ins, or a user's ``module:function``.

A task builder takes the split seed and returns a :class:`TaskData`: the protocol is in
``workers/tasks/_base.py`` (data as tensors or datasets, the problem kind, an example input) and
the kinds' losses and metrics in ``workers/tasks/_kinds.py``.
"""

from __future__ import annotations

from workers.tasks import _digits, _fashion_mnist, _rotten_tomatoes  # noqa: F401  (registers the built-ins)
from workers.tasks._base import (
    TASKS,
    TaskData,
    check_task_data,
    load_task,
    split_arrays,
    task_names,
)
from workers.tasks._kinds import CUSTOM, KINDS
from workers.tasks._pipeline import Rescale, Standardize, prepare, rescale, standardize

__all__ = [
    "CUSTOM",
    "KINDS",
    "TASKS",
    "Rescale",
    "Standardize",
    "TaskData",
    "check_task_data",
    "load_task",
    "prepare",
    "rescale",
    "split_arrays",
    "standardize",
    "task_names",
]
