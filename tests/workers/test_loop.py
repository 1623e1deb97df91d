"""The training loop on real data: learning, batch modes, L1, divergence, reads of the device,
batches of data left on the host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import workers
from workers.errors import TrialDivergedError
from workers.models import build_model
from workers.optimizers import OPTIMIZERS, build_optimizer
from workers.tasks import load_task
from workers.trial import loop
from workers.trial.loop import (
    batch_size_for,
    eval_batch_size,
    eval_batches,
    evaluate,
    evaluate_split,
    l1_norm,
    shuffled_batches,
    train_batches,
    train_epoch,
)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", 0)


def fit(data, name, lr, epochs=3, l1=0.0, batch=None):
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [32]}, data.input_shape, data.num_classes)
    opt = build_optimizer(name, model.parameters(), {"lr": lr})
    entry = OPTIMIZERS.get(name)
    bs = batch_size_for(entry.batch_mode, batch, len(data.x_train))
    gen = torch.Generator().manual_seed(0)
    steps = [
        train_epoch(
            model, opt, shuffled_batches(data.x_train, data.y_train, bs, gen), l1_penalty=l1
        ).steps
        for _ in range(epochs)
    ]
    return model, steps


def test_minibatch_training_learns_digits(digits):
    before = evaluate(
        build_model({"arch": "mlp", "hidden": [32]}, digits.input_shape, 10),
        digits.x_val,
        digits.y_val,
    )[1]
    model, steps = fit(digits, "adam", 0.01)
    after = evaluate(model, digits.x_val, digits.y_val)[1]
    assert before < 0.3 and after > 0.85
    assert steps[0] == -(-len(digits.x_train) // 64)


def test_batch_modes(digits):
    n = len(digits.x_train)
    assert batch_size_for("full", 32, n) == n
    assert batch_size_for("single", None, n) == 1 and batch_size_for("single", 16, n) == 16
    assert batch_size_for("minibatch", None, n) == 64
    _, steps = fit(digits, "gd", 0.5, epochs=2)
    assert steps == [1, 1]  # full batch: one step per epoch


def test_l1_penalty_shrinks_weights(digits):
    plain, _ = fit(digits, "adam", 0.01)
    sparse, _ = fit(digits, "adam", 0.01, l1=1e-3)
    assert float(l1_norm(sparse)) < 0.7 * float(l1_norm(plain))


def test_divergence_raises_with_reason(digits):
    with pytest.raises(TrialDivergedError, match="became (nan|inf)"):
        fit(digits, "minibatch", 1e12, epochs=2)


# ----------------------------------------------------------------- no read of the device per step

READS = ("__float__", "__int__", "__bool__", "item", "tolist", "cpu")


def count_reads(monkeypatch) -> list[str]:
    """Every read of a tensor's value into Python (or copy to the CPU) made by Podium's code
    (``workers/``): on a GPU each one waits for the queued work. Counted on the CPU build, where
    the same code runs. torch's own Adam reads its step counter each step; that counter is kept
    on the host (unless ``capturable``), so it costs no wait, and it is not counted."""
    seen: list[str] = []
    workers_dir = str(Path(workers.__file__).parent)
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **kw):
            if sys._getframe(1).f_code.co_filename.startswith(workers_dir):
                seen.append(_name)
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return seen


@pytest.mark.parametrize("name", ["adam", "minibatch"])
def test_an_epoch_reads_the_device_a_fixed_number_of_times_whatever_its_steps(
    digits, monkeypatch, name
):
    def reads_for(batch_size: int) -> tuple[int, int]:
        torch.manual_seed(0)
        model = build_model({"arch": "mlp", "hidden": [16]}, digits.input_shape, 10)
        opt = build_optimizer(name, model.parameters(), {"lr": 0.01})
        gen = torch.Generator().manual_seed(0)
        batches = list(shuffled_batches(digits.x_train, digits.y_train, batch_size, gen))
        seen = count_reads(monkeypatch)
        result = train_epoch(model, opt, batches)
        monkeypatch.undo()
        return len(seen), result.steps

    few, many = reads_for(512), reads_for(16)
    assert many[1] > 10 * few[1]  # many more steps ...
    assert many[0] == few[0] == 2  # ... and the same reads: the epoch's losses, once


def test_divergence_names_the_first_bad_step(digits):
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(float("nan")), torch.tensor(3.0)]

    class Fixed(torch.nn.Module):  # a loss that follows a script, one value per step
        def forward(self, x):
            return x

    steps = iter(losses)
    model = Fixed()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    batches = [(torch.zeros(2, 1), torch.zeros(2)) for _ in losses]

    def loss_fn(out, y):
        return next(steps).requires_grad_()

    with pytest.raises(TrialDivergedError, match="became nan at step 3 of the epoch"):
        train_epoch(model, opt, batches, loss_fn=loss_fn)


def test_epoch_loss_is_the_mean_over_examples():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the loss per batch is fixed
    batches = [(torch.zeros(3, 1), torch.zeros(3)), (torch.zeros(1, 1), torch.zeros(1))]
    per_batch = iter([torch.tensor(1.0), torch.tensor(5.0)])

    def loss_fn(out, y):
        return out.sum() * 0 + next(per_batch)

    result = train_epoch(model, opt, batches, loss_fn=loss_fn)
    assert result.steps == 2 and result.train_loss == pytest.approx((3 * 1 + 1 * 5) / 4)


def test_evaluate_split_reads_the_device_once_per_split(digits, monkeypatch):
    model = build_model({"arch": "mlp", "hidden": [16]}, digits.input_shape, 10)
    batches = list(eval_batches(digits, "val", batch_size=32))
    assert len(batches) > 5
    seen = count_reads(monkeypatch)
    scores = evaluate_split(model, batches, digits.loss_fn(), lambda out, y: {})
    monkeypatch.undo()
    assert set(scores) == {"loss"}
    assert seen.count("cpu") == 2 and seen.count("__float__") == 1  # outputs, targets, loss sum


# ----------------------------------------------------------------- data left on the host


def test_host_batches_are_the_same_batches_as_on_the_device(digits):
    on_device = list(shuffled_batches(digits.x_train, digits.y_train, 100, _gen()))
    on_host = list(loop._host_batches(digits, "train", 100, torch.device("cpu"), _gen()))
    assert len(on_host) == len(on_device)
    for (xa, ya), (xb, yb) in zip(on_device, on_host, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_in_memory_data_on_another_device_is_batched_on_the_host_and_copied(digits):
    # "meta" stands in for a GPU: the tensors stay on the CPU, and each batch arrives there.
    meta = torch.device("meta")
    train = list(train_batches(digits, 100, _gen(), meta))
    val = list(eval_batches(digits, "val", 64, meta))
    assert all(x.device == meta and y.device == meta for x, y in train + val)
    assert sum(len(y) for _, y in train) == len(digits.y_train)
    assert [len(y) for _, y in val] == [
        len(digits.y_val[i : i + 64]) for i in range(0, len(digits.y_val), 64)
    ]


def test_data_already_on_the_device_is_indexed_in_place(digits):
    (xb, _), *_ = train_batches(digits, 100, _gen(), torch.device("cpu"))
    assert xb.device == torch.device("cpu")
    assert loop._on(digits, torch.device("cpu")) and loop._on(digits, None)


def test_eval_batches_are_large_on_a_gpu():
    assert eval_batch_size(torch.device("cuda", 0)) == 8192
    assert eval_batch_size(torch.device("cpu")) == eval_batch_size(None) == 2048


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)
