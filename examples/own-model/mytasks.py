"""A team's own task, as Podium finds it: a function of the split seed that returns TaskData.

`podium run spec.yaml` in this folder imports this module itself (the spec's folder comes first
on the import path); nothing needs installing or PYTHONPATH.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_iris

from workers.tasks import TaskData, split_arrays, standardize


def iris(seed: int) -> TaskData:
    """Fisher's iris (150 flowers, 4 measurements in cm, 3 species), with one metric of the
    team's own on top of the classification defaults (accuracy, macro-F1).

    The measurements stay as ``load_iris`` gives them; ``standardize`` is fitted on the training
    split and becomes the front of the registered model, which answers a species name."""
    iris = load_iris()
    return split_arrays(
        "iris",
        iris.data,
        iris.target,
        seed,
        val_fraction=0.2,
        test_fraction=0.2,
        preprocess=standardize,
        classes=tuple(str(c) for c in iris.target_names),
        feature_names=("sepal_length", "sepal_width", "petal_length", "petal_width"),
        metrics={"worst_class_recall": (worst_class_recall, "max")},
    )


def worst_class_recall(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The recall of the species the model gets wrong most often: a model that gives up on one
    species scores low even when its accuracy looks fine."""
    pred = outputs.argmax(1)
    recalls = [float((pred[targets == c] == c).float().mean()) for c in np.unique(targets.numpy())]
    return min(recalls)


def diabetes_mixed(seed: int) -> TaskData:
    """Disease progression a year on (scikit-learn's 442 diabetes patients): a regression whose
    model takes two input tensors, the nine measurements (float32, standardised) and the
    patient's sex as a category id (int64, for an embedding). Each split's ``x`` is the tuple
    ``(numbers, category)``; ``input_shape`` has one shape per tensor."""
    from sklearn.datasets import load_diabetes

    raw, y = load_diabetes(return_X_y=True, scaled=False)
    sex = raw[:, 1].astype(np.int64) - 1  # recorded as 1 or 2
    numbers = np.delete(raw, 1, axis=1)
    numbers = ((numbers - numbers.mean(0)) / numbers.std(0)).astype(np.float32)
    target = ((y - y.mean()) / y.std()).astype(np.float32)  # standardised: one lr fits
    # split_arrays splits one array: split the row numbers, then take both tensors' rows.
    rows = split_arrays("rows", np.arange(len(y)), target, seed, kind="regression")
    pick = lambda idx: (torch.from_numpy(numbers[idx]), torch.from_numpy(sex[idx]))  # noqa: E731
    return TaskData(
        "diabetes-mixed",
        {s: (pick(x.numpy()), y) for s, (x, y) in rows.splits.items()},
        input_shape=((numbers.shape[1],), ()),
        num_classes=1,
        kind="regression",
    )
