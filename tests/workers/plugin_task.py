"""A user task plug-in, as a spec names it: ``task: tests.workers.plugin_task:tiny``."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from workers.tasks import TaskData, split_arrays


def tiny(seed: int) -> TaskData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return split_arrays("tiny", x, y, seed)


PACKING_BARRIER = ("podium-packing-barrier", "podium-tests")  # a named Ray actor, its namespace


def packed(seed: int) -> TaskData:
    """:func:`tiny`, loaded by a Tune trial only once the trials beside it arrive at the test's
    barrier (``tests/integration/test_cluster.py``): the trial fails unless they run at once.
    Elsewhere (the driver's spec check, a probe) it loads at once."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        name, namespace = PACKING_BARRIER
        barrier = ray.get_actor(name, namespace=namespace)
        together, expected = ray.get(barrier.arrive.remote())
        if together < expected:
            raise RuntimeError(f"only {together} of {expected} trials ran at once")
    return tiny(seed)


class _Generated(torch.utils.data.Dataset):
    """Examples made when read, never one tensor: a stand-in for data that does not fit."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        x = torch.randn(4, generator=g)
        return x, torch.tensor(int(x[0] + x[1] > 0))


def streamed(seed: int) -> TaskData:
    """The same problem as :func:`tiny`, as datasets read through a DataLoader."""
    splits = (_Generated(400, seed), _Generated(100, seed + 1), _Generated(100, seed + 2))
    return TaskData.from_datasets("streamed", *splits, num_classes=2, loader={"num_workers": 0})


def broken_model(input_shape, num_classes, width: int = 8) -> torch.nn.Module:  # noqa: ANN001
    """A plug-in with a bug: its first layer expects 3 inputs, whatever the task has."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, num_classes))


class _Scored(torch.nn.Module):
    def __init__(self, n_in: int, num_classes: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(n_in, 8)
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.body(x))
        return {"features": features, "scores": self.head(features)}


def scored(input_shape, num_classes):  # noqa: ANN001, ANN201
    """A model that returns ``{"features": ..., "scores": logits}``: needs ``model.output``."""
    return _Scored(int(input_shape[0]), num_classes)


def drifting(seed: int) -> TaskData:
    """A task whose validation split disagrees with training: the better a model fits train
    (and test, drawn like train), the worse it scores on val, so validation accuracy peaks at
    the first epoch and falls after it, like an overfitting trial's."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    data = split_arrays("drifting", x, y, seed)
    return data.with_parts(y_val=1 - data.y_val)


class _Houses(Dataset):
    """Rows of a regression as a CSV-backed dataset would give them, built on demand."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        x = torch.randn(6, generator=g)
        return x, (x[0] * 2 - x[1] + 0.5 * x[2] * x[3]).float()


def streamed_regression(seed: int) -> TaskData:
    """A regression read through a DataLoader (items built as they are read)."""
    splits = (_Houses(600, seed), _Houses(150, seed + 1), _Houses(150, seed + 2))
    return TaskData.from_datasets(
        "houses", *splits, num_classes=1, kind="regression", loader={"num_workers": 0}
    )
