"""Data sets scikit-learn ships inside its package (no download): the 8x8 digits (1,797 images),
breast cancer and wine (classification), and diabetes (regression)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from workers.tasks._base import TASKS, TaskData, split_arrays


@TASKS.register("digits")
def digits(seed: int) -> TaskData:
    x, y = digits_arrays()
    # Pixels are 0..16; scale to 0..1 and keep the image shape so a CNN can use it too.
    return split_arrays("digits", (x / 16.0).reshape(-1, 1, 8, 8), y, seed)


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

    bunch = load_breast_cancer()
    x = (bunch.data - bunch.data.mean(0)) / bunch.data.std(0)  # features span 1e-3..1e3
    names = tuple(str(n) for n in bunch.feature_names)  # the served model's named columns
    return split_arrays("breast_cancer", x, bunch.target, seed, feature_names=names)


@TASKS.register("wine")
def wine(seed: int) -> TaskData:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    x = (bunch.data - bunch.data.mean(0)) / bunch.data.std(0)
    names = tuple(str(n) for n in bunch.feature_names)
    return split_arrays("wine", x, bunch.target, seed, feature_names=names)


DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


@TASKS.register("diabetes")
def diabetes(seed: int) -> TaskData:
    """Regression: disease progression one year after baseline, from 10 measurements of 442
    patients (Efron et al. 2004, as scikit-learn ships it).

    Features and target are standardised with the training split's mean and deviation, so the
    reported ``val_rmse``/``test_rmse`` are in target deviations (1.0 = always predicting the
    mean; multiply by ``extra["target_std"]`` for the original units) and a model's output
    starts on the right scale.
    """
    x, y = _diabetes_arrays()
    data = split_arrays("diabetes", x, y, seed, kind="regression", feature_names=DIABETES_FEATURES)
    x_mean, x_std = data.x_train.mean(0), data.x_train.std(0)
    y_mean, y_std = float(data.y_train.mean()), float(data.y_train.std())
    scaled = {
        f"x_{s}": (getattr(data, f"x_{s}") - x_mean) / x_std for s in ("train", "val", "test")
    }
    scaled |= {
        f"y_{s}": (getattr(data, f"y_{s}") - y_mean) / y_std for s in ("train", "val", "test")
    }
    return dataclasses.replace(data, **scaled, extra={"target_mean": y_mean, "target_std": y_std})


def _diabetes_arrays() -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = (
        _sklearn_data_file(f) for f in ("diabetes_data_raw.csv.gz", "diabetes_target.csv.gz")
    )
    if x_path is not None and y_path is not None:
        return np.loadtxt(x_path), np.loadtxt(y_path)
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True, scaled=False)
    return x, y
