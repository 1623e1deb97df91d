"""training.grad_clip, accumulate, label_smoothing and patience (issue 28) change training as the
README says: real digits, real models, real optimizers."""

from __future__ import annotations

import copy

import pytest
import torch

from workers.models import build_model
from workers.tasks import load_task
from workers.trial.loop import train_epoch
from workers.trial.trainable import out_of_patience, training_loss, updates_per_epoch


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", 0)


def _model(data):
    torch.manual_seed(0)
    return build_model({"arch": "mlp", "hidden": [32]}, data.input_shape, data.num_classes)


def _batches(data, size: int, n: int = 256):
    x, y = data.x_train[:n], data.y_train[:n]
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]


def test_accumulate_4_at_batch_16_takes_the_steps_of_batch_64(digits):
    small, large = _model(digits), _model(digits)
    big = train_epoch(large, torch.optim.SGD(large.parameters(), lr=0.1), _batches(digits, 64))
    acc = train_epoch(
        small, torch.optim.SGD(small.parameters(), lr=0.1), _batches(digits, 16), accumulate=4
    )
    assert acc.steps == big.steps == 4  # updates, not batches
    for a, b in zip(small.parameters(), large.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert acc.train_loss == pytest.approx(big.train_loss, rel=1e-5)
    plain = _model(digits)
    steps = train_epoch(plain, torch.optim.SGD(plain.parameters(), lr=0.1), _batches(digits, 16))
    assert steps.steps == 16


def test_a_schedule_steps_once_per_update_when_batches_accumulate(digits):
    """An lr schedule counts optimizer updates: with accumulate 4, a quarter of the batches, so a
    cosine schedule still reaches its floor at the last epoch, not a quarter of the way."""
    from workers.optimizers.schedules import build_schedule

    model = _model(digits)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _batches(digits, 16)  # 16 batches of 16
    steps = updates_per_epoch(256, 16, accumulate=4)
    assert steps == 4
    schedule = build_schedule(opt, {"name": "cosine"}, steps, max_epochs=2)
    for _ in range(2):
        train_epoch(model, opt, batches, accumulate=4, schedule=schedule)
    assert opt.param_groups[0]["lr"] < 0.1 * 0.05  # at (near) the floor after 8 updates


def test_accumulate_works_with_a_closure_optimizer(digits):
    model = _model(digits)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=2)
    out = train_epoch(model, opt, _batches(digits, 16, 96), needs_closure=True, accumulate=3)
    assert out.steps == 2 and out.train_loss > 0


def test_grad_clip_bounds_each_update(digits):
    model = _model(digits)
    before = copy.deepcopy(model)
    # SGD at lr 1 moves the weights by exactly the (clipped) gradient: its norm is the bound.
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=1.0), _batches(digits, 64, 64),
                grad_clip=0.01)  # fmt: skip
    pairs = zip(model.parameters(), before.parameters(), strict=True)
    with torch.no_grad():
        moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in pairs))
    assert 0.0099 < float(moved) <= 0.0100001
    free = copy.deepcopy(before)
    train_epoch(free, torch.optim.SGD(free.parameters(), lr=1.0), _batches(digits, 64, 64))
    pairs = zip(free.parameters(), before.parameters(), strict=True)
    assert sum(float((a - b).detach().abs().sum()) for a, b in pairs) > 0.1


def test_label_smoothing_is_the_classifiers_cross_entropy_against_smoothed_targets(digits):
    logits = torch.tensor([[8.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0])
    plain = training_loss(digits, {})(logits, y)
    smooth = training_loss(digits, {"label_smoothing": 0.1})(logits, y)
    # 0.9 on the true class + 0.1 spread over all 10: a confident right answer costs more.
    log_p = torch.log_softmax(logits, 1)
    want = -(0.91 * log_p[0, 0] + 0.01 * log_p[0, 1:].sum())
    assert float(smooth) == pytest.approx(float(want), rel=1e-5) and smooth > plain


@pytest.mark.parametrize(
    ("values", "mode", "patience", "ends"),
    [
        ([0.5, 0.6, 0.6, 0.6], "max", 2, True),  # two epochs, no better than 0.6
        ([0.5, 0.6, 0.6, 0.7], "max", 2, False),
        ([0.5, 0.6], "max", 2, False),  # not enough epochs to judge
        ([1.0, 0.8, 0.9, 0.85], "min", 2, True),
        ([1.0, 0.8, 0.9, 0.85], "min", 3, False),
        ([0.5, 0.5, 0.5], "max", None, False),  # off
    ],
)
def test_patience_ends_a_trial_after_epochs_without_a_better_metric(values, mode, patience, ends):
    history = [{"val_m": v} for v in values]
    assert out_of_patience(history, ("val_m", mode), patience) is ends
