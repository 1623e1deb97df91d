"""Data sets scikit-learn ships inside its package (no download): the 8x8 digits (1,797 images),
breast cancer and wine (classification), and diabetes (regression)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from workers.tasks._base import TASKS, TaskData, split_arrays
from workers.tasks._pipeline import rescale, standardize


@TASKS.register("digits")
def digits(seed: int) -> TaskData:
    """The 8x8 digits as ``load_digits`` gives them (64 float64 pixels 0..16 per row); the
    model sees 0..1 as a ``(1, 8, 8)`` image (a CNN can use it too), scaled in the graph."""
    x, y = digits_arrays()
    classes = tuple(str(i) for i in range(10))
    return split_arrays(
        "digits", x, y, seed, preprocess=rescale(1 / 16, (1, 8, 8)), classes=classes
    )


def _sklearn_data_file(name: str) -> Path | None:
    """A file from scikit-learn's bundled data folder, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    for root in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(root, "datasets", "data", name)
        if path.is_file():
            return path
    return None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as ``(pixels (n, 64) float, labels (n,) int)``, as ``load_digits``
    returns them.

    Read straight from the CSV scikit-learn ships: importing ``sklearn.datasets`` took ~2 s
    here, as long as torch itself, and every new trial process paid it before its first epoch.
    Falls back to ``load_digits`` if the file is not where scikit-learn keeps it.
    """
    path = _sklearn_data_file("digits.csv.gz")
    if path is not None:
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1], data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x, y


@TASKS.register("breast_cancer")
def breast_cancer(seed: int) -> TaskData:
    from sklearn.datasets import load_breast_cancer

    return _tabular("breast_cancer", load_breast_cancer(), seed)  # features span 1e-3..1e3


def _tabular(name: str, bunch: Any, seed: int) -> TaskData:
    """A scikit-learn classification bunch: raw float64 columns by name (the served model's
    DataFrame columns), standardised by the training split inside the graph, named classes."""
    return split_arrays(
        name,
        bunch.data,
        bunch.target,
        seed,
        preprocess=standardize,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        classes=tuple(str(c) for c in bunch.target_names),
    )


@TASKS.register("wine")
def wine(seed: int) -> TaskData:
    from sklearn.datasets import load_wine

    return _tabular("wine", load_wine(), seed)


DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


@TASKS.register("diabetes")
def diabetes(seed: int) -> TaskData:
    """Regression: disease progression one year after baseline, from 10 measurements of 442
    patients (Efron et al. 2004, as scikit-learn ships it).

    The raw measurements (as ``load_diabetes(scaled=False)`` gives them) are standardised by
    the training split inside the graph; the model trains on standardised targets (so one
    learning rate fits), and ``val_rmse``/``test_rmse`` and the served ``prediction`` are in
    the target's own units.
    """
    x, y = _diabetes_arrays()
    return split_arrays(
        "diabetes",
        x,
        y,
        seed,
        kind="regression",
        feature_names=DIABETES_FEATURES,
        preprocess=standardize,
        scale_target=True,
    )


def _diabetes_arrays() -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = (
        _sklearn_data_file(f) for f in ("diabetes_data_raw.csv.gz", "diabetes_target.csv.gz")
    )
    if x_path is not None and y_path is not None:
        return np.loadtxt(x_path), np.loadtxt(y_path)
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    return x, y
