"""The task protocol: problem kinds, data as tensors or datasets, and what a task must give."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from workers.models import build_model
from workers.tasks import KINDS, TaskData, check_task_data, load_task, split_arrays
from workers.trial.loop import eval_batches, evaluate_split, train_batches, train_epoch


def test_classification_metrics_include_macro_f1_which_punishes_an_ignored_class():
    metrics = KINDS["classification"].metrics
    y = torch.tensor([0] * 9 + [1])
    always_zero = torch.tensor([[1.0, 0.0]] * 10)
    got = metrics(always_zero, y)
    assert got["accuracy"] == pytest.approx(0.9)
    # class 0: F1 = 18/19; class 1: never predicted, F1 = 0
    assert got["macro_f1"] == pytest.approx((18 / 19) / 2)


def test_regression_metrics_match_their_definitions():
    out = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    y = torch.tensor([1.0, 2.0, 4.0, 4.0])
    got = KINDS["regression"].metrics(out, y)
    assert got["rmse"] == pytest.approx(math.sqrt(2 / 4))
    assert got["mae"] == pytest.approx(0.5)
    sst = float(((y - y.mean()) ** 2).sum())
    assert got["r2"] == pytest.approx(1 - 2 / sst)
    assert float(KINDS["regression"].loss(out, y)) == pytest.approx(0.5)


def test_multilabel_micro_f1_counts_every_label_decision():
    logits = torch.tensor([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]])
    y = torch.tensor([[1, 0, 0], [0, 1, 1]])
    # tp = 2, fp = 1, fn = 1
    assert KINDS["multilabel"].metrics(logits, y)["micro_f1"] == pytest.approx(4 / 6)


def test_split_arrays_keeps_token_ids_as_integers_and_regression_targets_as_floats():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(100, 7))
    data = split_arrays("tok", tokens, rng.integers(0, 2, 100), seed=0)
    assert data.x_train.dtype == torch.int64 and data.input_shape == (7,)
    reg = split_arrays("reg", rng.normal(size=(100, 3)), rng.normal(size=100), 0, kind="regression")
    assert reg.y_train.dtype == torch.float32 and reg.num_classes == 1
    assert check_task_data(reg) == []


def test_a_task_breaking_the_protocol_is_told_what_is_wrong():
    x = torch.randn(10, 3)
    assert check_task_data("nope") == ["returned str, not workers.tasks.TaskData"]
    splits = {s: (x, x[:, 0]) for s in ("train", "val", "test")}
    floats = TaskData("t", splits, input_shape=(3,), num_classes=2)
    assert any("int64 class ids" in p for p in check_task_data(floats))
    custom = TaskData("t", splits, "custom", input_shape=(3,), num_classes=1)
    assert "kind 'custom' needs both loss and metrics" in check_task_data(custom)
    half = TaskData("t", {"train": TensorDataset(x, x)}, input_shape=(3,), num_classes=1)
    assert any("splits must be {'train', 'val', 'test'}" in p for p in check_task_data(half))
    mixed = TaskData("t", {**splits, "val": TensorDataset(x, x)}, input_shape=(3,), num_classes=1)
    assert "splits must all be (x, y) in memory or all datasets" in check_task_data(mixed)
    no_mode = TaskData("t", splits, "regression", 1, (3,), metrics={"m": (len, "up")})
    assert "metrics['m'] mode must be 'max' or 'min', got 'up'" in check_task_data(no_mode)


class CountingDataset(Dataset):
    """A dataset that is never held as one tensor: each example is built when it is read."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.reads = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads += 1
        g = torch.Generator().manual_seed(self.seed * 100_000 + i)
        x = torch.randn(4, generator=g)
        return x, torch.tensor(int(x[0] + x[1] > 0))


def test_a_dataset_task_streams_through_a_data_loader_and_trains():
    train, val, test = CountingDataset(256, 0), CountingDataset(64, 1), CountingDataset(64, 2)
    data = TaskData.from_datasets("stream", train, val, test, num_classes=2)
    assert data.input_shape == (4,) and not data.in_memory and check_task_data(data) == []
    before = train.reads  # from_datasets read one example for the input shape
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [16]}, data.input_shape, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        result = train_epoch(model, opt, train_batches(data, 32, gen), loss_fn=data.loss_fn())
    assert result.steps == 8 and train.reads - before == 5 * 256  # each example once an epoch
    scores = evaluate_split(model, eval_batches(data, "val", 16), data.loss_fn(), data.metrics_fn())
    assert val.reads == 64 and scores["accuracy"] > 0.8
    assert data.example_input().shape == (4, 4)


def test_a_tasks_own_metrics_join_its_kinds():
    data = load_task("digits", 0)
    extra = dataclasses.replace(data, metrics={"top2": (lambda out, y: 1.0, "max")})
    modes = extra.metric_modes_all()
    assert modes["val_top2"] == "max" and modes["val_accuracy"] == "max"
    assert set(extra.metrics_fn()(torch.randn(5, 10), torch.arange(5))) == {
        "accuracy",
        "macro_f1",
        "top2",
    }


def test_diabetes_trains_standardised_and_answers_in_the_targets_units():
    data = load_task("diabetes", 0)
    assert data.kind == "regression" and data.input_shape == (10,) and data.num_classes == 1
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 442
    # Trained on standardised inputs and targets, fitted on the training split ...
    assert float(data.y_train.mean()) == pytest.approx(0.0, abs=1e-5)
    assert data.x_train.mean(0).abs().max() < 1e-4 and data.x_train.dtype == torch.float32
    # ... while the raw split is what load_diabetes(scaled=False) gives, and the answer's
    # scale is the training targets' (disease progression spans 25..346).
    raw_x, raw_y = data.pipeline.raw_test
    assert raw_x.dtype == torch.float64 and float(raw_x[:, 0].max()) > 20  # age in years
    assert data.pipeline.answer["target_std"][0] > 10 and raw_y.max() > 100
    # Metrics are in the target's units: predicting the training mean scores its deviation.
    rmse = data.metrics_fn()(torch.zeros(len(data.y_test), 1), data.y_test)["rmse"]
    spread = raw_y.double() - data.pipeline.answer["target_mean"][0]
    assert rmse == pytest.approx(float(spread.pow(2).mean().sqrt()), rel=1e-5)
    assert data.feature_names[2] == "bmi"


def test_the_protocols_documented_examples_run():
    import doctest

    import workers.inputs
    import workers.registry
    import workers.tasks._base
    import workers.tasks._kinds

    for module in (workers.tasks._base, workers.tasks._kinds, workers.registry, workers.inputs):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
