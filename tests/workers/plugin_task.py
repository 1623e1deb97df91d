"""A user task plug-in, as a spec names it: ``task: tests.workers.plugin_task:tiny``."""

from __future__ import annotations

import numpy as np

from workers.tasks import TaskData, split_arrays


def tiny(seed: int) -> TaskData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return split_arrays("tiny", x, y, seed)
