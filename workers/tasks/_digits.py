"""scikit-learn's bundled 8x8 digits (1,797 images); shipped with the package, no download."""

from __future__ import annotations

from workers.tasks._base import TASKS, TaskData, split_arrays


@TASKS.register("digits")
def digits(seed: int) -> TaskData:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    # Pixels are 0..16; scale to 0..1 and keep the image shape so a CNN can use it too.
    return split_arrays("digits", (x / 16.0).reshape(-1, 1, 8, 8), y, seed)


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
