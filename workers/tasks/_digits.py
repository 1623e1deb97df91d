"""scikit-learn's bundled 8x8 digits (1,797 images); shipped with the package, no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from workers.tasks._base import TASKS, TaskData, split_arrays


@TASKS.register("digits")
def digits(seed: int) -> TaskData:
    x, y = digits_arrays()
    # Pixels are 0..16; scale to 0..1 and keep the image shape so a CNN can use it too.
    return split_arrays("digits", (x / 16.0).reshape(-1, 1, 8, 8), y, seed)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as ``(pixels (n, 64) float, labels (n,) int)``, as ``load_digits``
    returns them.

    Read straight from the CSV scikit-learn ships: importing ``sklearn.datasets`` took ~2 s
    here, as long as torch itself, and every new trial process paid it before its first epoch.
    Falls back to ``load_digits`` if the file is not where scikit-learn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x, y


@TASKS.register("breast_cancer")
def breast_cancer(seed: int) -> TaskData:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)  # features span 1e-3..1e3; standardise
    return split_arrays("breast_cancer", x, y, seed)


@TASKS.register("wine")
def wine(seed: int) -> TaskData:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return split_arrays("wine", x, y, seed)
