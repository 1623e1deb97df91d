"""Registries, tasks and models: names in, real data and working modules out."""

from __future__ import annotations

import pytest
import torch

from workers.errors import DataNotFoundError, UnknownNameError, WorkerError
from workers.models import MODELS, build_model
from workers.optimizers import OPTIMIZERS, build_optimizer
from workers.registry import Registry, is_plugin_ref, load_plugin
from workers.tasks import TaskData, load_task, task_names
from workers.tasks import _fashion_mnist as fm


def test_unknown_name_lists_valid_ones():
    reg = Registry[int]("thing")
    reg.add("b", 2)
    reg.add("a", 1)
    with pytest.raises(UnknownNameError) as e:
        reg.get("c")
    assert str(e.value) == "thing: 'c' is not one of: a, b"
    with pytest.raises(ValueError, match="twice"):
        reg.add("a", 3)


def test_plugin_refs_load_and_fail_clearly():
    assert is_plugin_ref("math:sqrt") and not is_plugin_ref("digits") and not is_plugin_ref("a:b:c")
    assert load_plugin("math:sqrt")(9) == 3
    with pytest.raises(WorkerError, match="cannot import plug-in module 'no_such_mod'"):
        load_plugin("no_such_mod:f")
    with pytest.raises(WorkerError, match="has no attribute 'nope'"):
        load_plugin("math:nope")


def test_digits_splits_are_deterministic_and_disjoint():
    a, b = load_task("digits", 0), load_task.__wrapped__("digits", 0)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert float(a.x_train.max()) <= 1.0
    c = load_task("digits", 1)
    assert not torch.equal(a.y_test, c.y_test)


def test_digits_read_from_the_shipped_file_equal_scikit_learns_loader():
    import numpy as np
    from sklearn.datasets import load_digits

    from workers.tasks._digits import digits_arrays

    x, y = digits_arrays()
    want_x, want_y = load_digits(return_X_y=True)
    assert np.array_equal(x, want_x) and np.array_equal(y, want_y) and y.dtype == want_y.dtype


def test_stratified_split_holds_out_each_class_in_proportion():
    import numpy as np

    from workers.tasks._base import stratified_split

    y = np.repeat(np.arange(3), [100, 50, 10])
    rest, held = stratified_split(y, 0.2, np.random.default_rng(0))
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(160))  # a partition
    assert np.bincount(y[held]).tolist() == [20, 10, 2]
    again, _ = stratified_split(y, 0.2, np.random.default_rng(0))
    other, _ = stratified_split(y, 0.2, np.random.default_rng(1))
    assert np.array_equal(rest, again) and not np.array_equal(rest, other)


def test_builtin_tasks_are_registered():
    assert {"digits", "fashion-mnist", "breast_cancer", "wine"} <= set(task_names())


def test_user_task_plugin():
    data = load_task("tests.workers.plugin_task:tiny", 0)
    assert isinstance(data, TaskData) and data.name == "tiny"


def test_fashion_mnist_reads_real_idx_files():
    if not fm.data_dir().exists():
        pytest.skip("dataset-fashion-mnist is not installed (make install installs it as root)")
    data = load_task("fashion-mnist", 0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.x_test) == 10_000 and len(data.x_train) + len(data.x_val) == 60_000
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PODIUM_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_arrays()


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_models_map_inputs_to_logits(arch, batch_norm):
    model = build_model(
        {"arch": arch, "hidden": [16], "batch_norm": batch_norm, "dropout": 0.2}, (1, 8, 8), 10
    )
    out = model(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10)
    has_bn = any(
        isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in model.modules()
    )
    assert has_bn == batch_norm
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_cnn_needs_images():
    with pytest.raises(ValueError, match="needs image input"):
        build_model({"arch": "cnn"}, (30,), 2)
    assert "mlp" in MODELS and "cnn" in MODELS


def test_optimizer_defaults_and_overrides():
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer("nag", params, {"lr": 0.2})
    assert (
        opt.defaults["nesterov"] is True
        and opt.defaults["momentum"] == 0.9
        and opt.defaults["lr"] == 0.2
    )
    assert (
        OPTIMIZERS.get("gd").batch_mode == "full" and OPTIMIZERS.get("sgd").batch_mode == "single"
    )
