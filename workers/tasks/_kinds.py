"""Problem kinds: what a task's kind sets — the training loss, the metrics and their modes.

A metric function takes the model's outputs and the targets of a whole split (concatenated over
its batches) and returns plain floats by name; the trial reports each as ``val_<name>`` every
epoch and ``test_<name>`` at the end, with ``val_loss`` / ``test_loss`` beside them.

============== ===================== =========================================== ==============
kind           loss                  metrics (mode)                              targets
============== ===================== =========================================== ==============
classification cross-entropy         accuracy (max), macro_f1 (max)              int64 class ids
regression     mean squared error    rmse (min), mae (min), r2 (max)             float, (n,) or
                                                                                 (n, outputs)
multilabel     binary cross-entropy  micro_f1 (max)                              0/1, (n, labels)
============== ===================== =========================================== ==============

A task may replace the loss (``TaskData.loss``) and add or replace metrics (``TaskData.metrics``,
``{name: (function, mode)}``); ``kind: custom`` has only the task's own.

Example:
    >>> import torch
    >>> metrics = KINDS["regression"].metrics
    >>> out = metrics(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 4.0]))
    >>> round(out["rmse"], 4), round(out["mae"], 4)
    (1.4142, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metrics = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]
Metric = Callable[[torch.Tensor, torch.Tensor], float]  # one of a task's own, by name


@dataclass(frozen=True)
class Kind:
    """A problem kind: its loss, its metrics, their modes; ``primary`` leads the defaults
    (``search.metric: val_<primary>``, ``promotion.objectives: [test_<primary>]``)."""

    loss: Loss
    metrics: Metrics
    modes: Mapping[str, str]
    primary: str


def _classification_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def _classification_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = out.argmax(1)
    classes = max(int(out.shape[1]), 1)
    # Macro-F1: the mean of per-class F1 over the classes present in targets or predictions,
    # so a model that ignores a rare class pays for it even when accuracy looks fine.
    f1s = []
    for c in range(classes):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": int((pred == y).sum()) / len(y) if len(y) else 0.0,  # exact, not float32
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
    }


def _as_targets(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Targets shaped and typed like the outputs: a (n,) target for a (n, 1) output."""
    return y.reshape(out.shape).to(out.dtype)


def _regression_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, _as_targets(out, y))


def _regression_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    out = out.double()
    y = _as_targets(out, y)
    err = out - y
    total = float(((y - y.mean(0)) ** 2).sum())
    return {
        "rmse": float(err.pow(2).mean().sqrt()),
        "mae": float(err.abs().mean()),
        # 1 - SSE/SST; a constant target has no variance to explain (SST = 0): r2 is 0 then.
        "r2": 1.0 - float(err.pow(2).sum()) / total if total > 0 else 0.0,
    }


def _multilabel_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, _as_targets(out, y))


def _multilabel_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = out > 0  # sigmoid(logit) > 0.5
    truth = _as_targets(out, y) > 0.5
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return {"micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}


KINDS: dict[str, Kind] = {
    "classification": Kind(
        _classification_loss,
        _classification_metrics,
        {"accuracy": "max", "macro_f1": "max"},
        "accuracy",
    ),
    "regression": Kind(
        _regression_loss, _regression_metrics, {"rmse": "min", "mae": "min", "r2": "max"}, "rmse"
    ),
    "multilabel": Kind(_multilabel_loss, _multilabel_metrics, {"micro_f1": "max"}, "micro_f1"),
}
CUSTOM = "custom"  # a task's own loss and metrics only
