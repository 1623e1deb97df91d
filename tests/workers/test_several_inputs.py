"""A model of several input tensors: the task protocol, training from tensors and from a
DataLoader, checkpoint metadata, ONNX export with named inputs, and what refuses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from workers import inputs
from workers.errors import WorkerError
from workers.models import build_model
from workers.recipes._export import export_onnx
from workers.recipes._measure import onnx_session
from workers.tasks import TaskData, check_task_data
from workers.trial.loop import eval_batches, evaluate_split, train_batches, train_epoch


class NumbersAndId(nn.Module):
    """numbers (batch, 3) and an id (batch,), the id embedded and joined before an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 4)
        self.body = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, numbers: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([numbers, self.embed(ids)], dim=1))


def two_inputs(n: int, seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A class that depends on both inputs: the id alone or the numbers alone get ~75%."""
    g = torch.Generator().manual_seed(seed)
    numbers, ids = torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g)
    y = ((numbers[:, 0] > 0) ^ (ids % 2 == 1)).long()
    return (numbers, ids), y


def task(**over) -> TaskData:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (
        two_inputs(600, 0),
        two_inputs(200, 1),
        two_inputs(200, 2),
    )
    fields = dict(input_shape=((3,), ()), num_classes=2, **over)
    splits = {"train": (x_tr, y_tr), "val": (x_va, y_va), "test": (x_te, y_te)}
    return TaskData("two", splits, **fields)


class PairSet(Dataset):
    def __init__(self, x: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):  # noqa: ANN204
        return (self.x[0][i], self.x[1][i]), self.y[i]


def fit(data: TaskData, epochs: int = 30) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    model = NumbersAndId()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        train_epoch(model, opt, train_batches(data, 64, g))
    scores = evaluate_split(model, eval_batches(data, "val"), data.loss_fn(), data.metrics_fn())
    return model, scores["accuracy"]


def test_a_model_of_two_inputs_learns_what_needs_both():
    data = task()
    assert check_task_data(data) == [] and data.input_count == 2
    _, accuracy = fit(data)
    assert accuracy > 0.9  # neither input alone explains more than ~75%


def test_the_same_task_as_datasets_streams_through_a_dataloader():
    mem = task()
    sets = [
        PairSet(getattr(mem, f"x_{s}"), getattr(mem, f"y_{s}")) for s in ("train", "val", "test")
    ]
    data = TaskData.from_datasets("two", *sets, num_classes=2)
    assert data.input_shape == ((3,), ()) and check_task_data(data) == []
    example = data.example_input()
    assert isinstance(example, tuple) and example[1].dtype == torch.int64
    _, accuracy = fit(data)
    assert accuracy > 0.9


def test_a_mismatched_task_is_told_what_is_wrong():
    (x, y) = two_inputs(10)
    same = lambda x: {s: (x, y) for s in ("train", "val", "test")}  # noqa: E731
    one_shape = TaskData("bad", same(x), input_shape=(3,), num_classes=2)
    assert any("2 tensor(s)" in p for p in check_task_data(one_shape))
    short = TaskData(
        "bad", {**same(x), "train": ((x[0], x[1][:5]), y)}, input_shape=((3,), ()), num_classes=2
    )
    assert any("[10, 5] rows but y_train has 10" in p for p in check_task_data(short))


def test_built_in_architectures_refuse_several_inputs():
    with pytest.raises(WorkerError, match="takes one input tensor; the task gives 2"):
        build_model({"arch": "mlp", "hidden": [8]}, ((3,), ()), 2)


def test_the_onnx_export_takes_every_input_by_name(tmp_path):
    data = task()
    model, _ = fit(data, epochs=2)
    path = export_onnx(model, data.example_input(), tmp_path / "m.onnx")
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["input_0", "input_1"]
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    x = inputs.take(data.x_test, slice(0, 50))
    got = session.run(None, inputs.arrays(x))[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, inputs.forward(model, x).numpy(), rtol=1e-5, atol=1e-5)


def test_shapes_survive_a_json_round_trip():
    import json

    shape = ((9,), ())
    assert inputs.as_shape(json.loads(json.dumps(inputs.json_shape(shape)))) == shape
    assert inputs.as_shape(json.loads(json.dumps(inputs.json_shape((1, 8, 8))))) == (1, 8, 8)


def test_a_checkpoints_example_inputs_hold_only_their_rows(tmp_path):
    import io

    from workers import inputs

    split = torch.randn(10_000, 784)  # a test split: the example is its first rows
    example = inputs.detached((split[:4], torch.arange(40_000).view(10_000, 4)[:4]))
    buf = io.BytesIO()
    torch.save(example, buf)
    assert buf.tell() < 20_000  # 4 rows each, not the 31 MB the split's storage holds
    assert torch.equal(example[0], split[:4])
