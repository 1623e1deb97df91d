"""The training loop on real data: learning, batch modes, L1, divergence."""

from __future__ import annotations

import pytest
import torch

from workers.errors import TrialDivergedError
from workers.loop import batch_size_for, evaluate, l1_norm, shuffled_batches, train_epoch
from workers.models import build_model
from workers.optimizers import OPTIMIZERS, build_optimizer
from workers.tasks import load_task


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
