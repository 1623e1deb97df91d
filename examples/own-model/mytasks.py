"""A team's own task, as Podium finds it: a function of the split seed that returns TaskData.

`podium run spec.yaml` in this folder imports this module itself (the spec's folder comes first
on the import path); nothing needs installing or PYTHONPATH.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_iris

from workers.tasks import TaskData, split_arrays


def iris(seed: int) -> TaskData:
    """Fisher's iris (150 flowers, 4 measurements, 3 species), standardised, with one metric of
    the team's own on top of the classification defaults (accuracy, macro-F1)."""
    x, y = load_iris(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return split_arrays(
        "iris",
        x,
        y,
        seed,
        val_fraction=0.2,
        test_fraction=0.2,
        feature_names=("sepal_length", "sepal_width", "petal_length", "petal_width"),
        metrics=worst_class_recall,
        metric_modes={"worst_class_recall": "max"},
    )


def worst_class_recall(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The recall of the species the model gets wrong most often: a model that gives up on one
    species scores low even when its accuracy looks fine."""
    pred = outputs.argmax(1)
    recalls = [float((pred[targets == c] == c).float().mean()) for c in np.unique(targets.numpy())]
    return {"worst_class_recall": min(recalls)}
