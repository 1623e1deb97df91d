"""The task protocol: what a task function (``def my_task(seed) -> TaskData``) returns.

One example per kind (each runs as written; ``split_arrays`` makes a seeded split)::

    >>> import numpy as np, torch
    >>> from torch.utils.data import TensorDataset
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 4))
    >>> # classification: int class ids; loss cross-entropy; val_accuracy, val_macro_f1
    >>> clf = split_arrays("clf", x, (x[:, 0] > 0).astype(int), seed=0)
    >>> # regression: float targets; loss MSE; val_rmse, val_mae, val_r2
    >>> reg = split_arrays("reg", x, x @ [1.0, 2.0, 0.0, 0.0], seed=0, kind="regression")
    >>> # multilabel: 0/1 per label; loss BCE; val_micro_f1
    >>> tags = split_arrays("tags", x, (x[:, :3] > 0).astype(float), 0, kind="multilabel")
    >>> # tokens: integer inputs stay int64 (an embedding's ids)
    >>> tok = split_arrays("tok", rng.integers(0, 100, (200, 12)), (x[:, 0] > 0).astype(int), 0)
    >>> # the task's own loss and metrics, each {name: (function, mode)} (kind custom: only these)
    >>> own = split_arrays("own", x, x[:, 0], 0, kind="custom", num_classes=1,
    ...     loss=lambda out, y: (out[:, 0] - y).abs().mean(),
    ...     metrics={"mae": (lambda out, y: float((out[:, 0] - y).abs().mean()), "min")})
    >>> # raw columns, standardised by the training split's statistics inside the served model
    >>> from workers.tasks import standardize
    >>> raw = split_arrays("raw", x * 100, (x[:, 0] > 0).astype(int), 0, preprocess=standardize)
    >>> # several input tensors: x is a tuple per split, input_shape one shape per tensor
    >>> two = TaskData("two", {s: ((torch.randn(n, 4), torch.randint(0, 3, (n,))),
    ...     torch.randint(0, 2, (n,))) for s, n in (("train", 150), ("val", 25), ("test", 25))},
    ...     input_shape=((4,), ()), num_classes=2)
    >>> # data that does not fit in memory: datasets, read through a DataLoader
    >>> sets = [TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))) for _ in range(3)]
    >>> big = TaskData.from_datasets("big", *sets, num_classes=2, loader={"num_workers": 2})
    >>> [check_task_data(t) for t in (clf, reg, tags, tok, own, raw, two, big)]
    [[], [], [], [], [], [], [], []]
    >>> sorted(reg.metric_modes_all())[:3], tags.num_classes, tok.x_train.dtype
    (['test_loss', 'test_mae', 'test_r2'], 3, torch.int64)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from workers import inputs
from workers.errors import WorkerError
from workers.inputs import Inputs
from workers.registry import Registry, is_plugin_ref, load_plugin
from workers.tasks._kinds import CUSTOM, KINDS, Kind, Loss, Metric, Metrics
from workers.tasks._pipeline import prepare, target_units

TASKS: Registry[Callable[[int], TaskData]] = Registry("task")
EXAMPLES = 4  # example inputs kept for export and signatures (batch > 1: a dynamic batch axis)


@dataclass(frozen=True)
class TaskData:
    """A task: its splits, its problem kind, and what a model needs to know of its inputs.

    The protocol every task follows, built-in or a user's ``module:function`` (a function of the
    split seed that returns one of these). ``splits`` holds train, val and test, each either
    ``(x, y)`` in memory (batched by indexing: fast) or a ``torch.utils.data.Dataset`` of
    ``(x, y)`` pairs read through a ``DataLoader`` (``loader``: ``num_workers``, ...; pinned
    memory on a GPU), for data that does not fit in memory (:meth:`from_datasets`).

    ``x`` is what a user has (float64 columns, uint8 images, strings) when ``preprocess`` turns
    it into model inputs, else the model inputs themselves: float features, images ``(C, H, W)``,
    int64 token ids, or a tuple of tensors for a model of several inputs (called as
    ``model(*x)``; its served inputs are ``input_0``, ``input_1``...).

    Attributes:
        name: the task's name as the spec gives it.
        splits: ``{"train": (x, y) | Dataset, "val": ..., "test": ...}``.
        kind: ``classification``, ``regression``, ``multilabel`` (``workers.tasks._kinds``: the
            loss, metrics and answer) or ``custom`` (the task's own loss and metrics only).
        num_classes: the model's output width: classes, regression targets or labels.
        input_shape: one model input's shape, e.g. ``(1, 28, 28)``; one per tensor for several
            inputs, e.g. ``((9,), ())``. With ``preprocess``, found by applying it.
        preprocess: raw inputs to model inputs, fitted on the training split only: a
            ``torch.nn.Module`` (``standardize``, ``rescale``) or a tokenizer with
            ``onnx_model()``; applied once per process, it becomes the front of the served graph.
        classes: class (or label) names in id order: the served ``label``; default the ids.
        target_scale: regression ``(mean, std)``: trained on ``(y - mean) / std``, scored and
            served in the target's units.
        loss: ``loss(outputs, targets) -> scalar tensor``, replacing the kind's.
        metrics: ``{name: (metric(outputs, targets) -> float, "max" | "min")}`` on a whole
            split, added to the kind's (a name the kind has is replaced).
        feature_names: column names of tabular inputs (the served model's signature).
        example: a few inputs for export and latency measurement (default: test inputs).
        extra: JSON-able facts saved with the model, e.g. a text task's vocabulary.
        loader: ``DataLoader`` options for datasets.

    Example:
        >>> import torch
        >>> x, y = torch.randn(30, 3), torch.randn(30)
        >>> data = TaskData("demo", {"train": (x[:20], y[:20]), "val": (x[20:25], y[20:25]),
        ...     "test": (x[25:], y[25:])}, "regression", num_classes=1, input_shape=(3,))
        >>> data.metric_modes_all()["val_rmse"], data.primary_metric(), data.x_val.shape
        ('min', 'rmse', torch.Size([5, 3]))
    """

    name: str
    splits: Mapping[str, Any]
    kind: str = "classification"
    num_classes: int = 0
    input_shape: tuple = ()
    preprocess: Any = None
    classes: tuple[str, ...] | None = None
    target_scale: tuple[Any, Any] | None = None
    loss: Loss | None = None
    metrics: Mapping[str, tuple[Metric, str]] = field(default_factory=dict)
    feature_names: tuple[str, ...] | None = None
    example: Any = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    loader: Mapping[str, Any] = field(default_factory=dict)
    pipeline: Any = field(default=None, repr=False)  # set by prepare(), never by a task

    # Views of ``splits``: x_train ... y_test in memory (None for datasets), *_set datasets.
    x_train = property(lambda self: self._part("train", 0))
    y_train = property(lambda self: self._part("train", 1))
    x_val = property(lambda self: self._part("val", 0))
    y_val = property(lambda self: self._part("val", 1))
    x_test = property(lambda self: self._part("test", 0))
    y_test = property(lambda self: self._part("test", 1))
    train_set = property(lambda self: self._dataset("train"))
    val_set = property(lambda self: self._dataset("val"))
    test_set = property(lambda self: self._dataset("test"))

    def _part(self, split: str, i: int) -> Any:
        value = self.splits.get(split)
        return value[i] if isinstance(value, tuple) else None

    def _dataset(self, split: str) -> Any:
        value = self.splits.get(split)
        return None if isinstance(value, tuple) else value

    def with_parts(self, **parts: Any) -> TaskData:
        """A copy with in-memory parts replaced, e.g. ``with_parts(x_train=..., y_train=...)``."""
        splits = {s: list(v) if isinstance(v, tuple) else v for s, v in self.splits.items()}
        for key, value in parts.items():
            which, split = key.split("_", 1)
            splits[split][0 if which == "x" else 1] = value
        whole = {s: tuple(v) if isinstance(v, list) else v for s, v in splits.items()}
        return dataclasses.replace(self, splits=whole)

    @classmethod
    def from_datasets(
        cls, name: str, train: Dataset, val: Dataset, test: Dataset, **fields: Any
    ) -> TaskData:
        """A task whose splits are datasets of ``(x, y)``; ``input_shape`` defaults to the
        first training example's shape.

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> sets = [TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 3
            >>> TaskData.from_datasets("demo", *sets, num_classes=2).input_shape
            (4,)
        """
        if "input_shape" not in fields:
            first = train[0][0]
            several = inputs.is_multi(first)
            fields["input_shape"] = (
                tuple(tuple(t.shape) for t in first) if several else tuple(first.shape)
            )
        return cls(name, {"train": train, "val": val, "test": test}, **fields)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.splits.get("train"), tuple)

    def split_size(self, split: str) -> int:
        """Examples in ``split`` (``train``, ``val`` or ``test``)."""
        if self.in_memory:
            return inputs.rows(getattr(self, f"x_{split}"))
        return len(getattr(self, f"{split}_set"))  # type: ignore[arg-type]

    @property
    def input_count(self) -> int:
        """How many tensors the model takes (1, or each of several inputs)."""
        return len(self.input_shape) if inputs.is_multi_shape(self.input_shape) else 1

    def example_input(self, n: int = 4) -> Inputs:
        """Up to ``n`` inputs (batch > 1 keeps an ONNX export's batch axis dynamic)."""
        if self.example is not None:
            return inputs.take(self.example, slice(0, n))
        if self.x_test is not None:  # in memory (or a dataset task's test split read for recipes)
            return inputs.take(self.x_test, slice(0, n))
        if n <= EXAMPLES:
            return inputs.take(self._first_test_inputs, slice(0, n))
        return self._test_inputs(n)

    @functools.cached_property
    def _first_test_inputs(self) -> Inputs:
        # Read once: a dataset's items may come from disk, and every checkpoint saves them.
        return self._test_inputs(EXAMPLES)

    def _test_inputs(self, n: int) -> Inputs:
        assert self.test_set is not None
        count = min(n, len(self.test_set))  # type: ignore[arg-type]
        return inputs.stack([self.test_set[i][0] for i in range(count)])

    def loss_fn(self) -> Loss:
        return self.loss or _kind(self.kind).loss

    def metrics_fn(self, units: bool = True) -> Metrics:
        """The kind's metrics plus the task's own (which win on a shared name); with ``units``,
        a regression trained on scaled targets is scored in the target's own units."""
        base = None if self.kind == CUSTOM else _kind(self.kind).metrics
        own = self.metrics
        answer = self.pipeline.answer if self.pipeline is not None and units else {}

        def both(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
            out, y = target_units(out, y, answer)  # a regression trained on scaled targets
            values = dict(base(out, y)) if base else {}
            values.update({name: fn(out, y) for name, (fn, _) in own.items()})
            return {k: float(v) for k, v in values.items()}

        return both

    def primary_metric(self) -> str:
        """The metric the defaults optimise: the kind's, else the task's first own metric."""
        if self.kind == CUSTOM:
            return next(iter(self.metrics))
        return _kind(self.kind).primary

    def metric_modes_all(self) -> dict[str, str]:
        """Every metric the task's trials report, ``val_*`` per epoch and ``test_*`` at the end,
        with its mode (losses: min)."""
        modes = {} if self.kind == CUSTOM else dict(_kind(self.kind).modes)
        modes.update({name: mode for name, (_, mode) in self.metrics.items()})
        out = {"val_loss": "min", "test_loss": "min"}
        for name, mode in modes.items():
            out[f"val_{name}"] = mode
            out[f"test_{name}"] = mode
        return out


def _kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise WorkerError(
            f"task kind {name!r} is not one of: {', '.join([*KINDS, CUSTOM])}"
        ) from None


def check_task_data(data: Any) -> list[str]:
    """What is wrong with a task builder's return value (empty when it follows the protocol)."""
    if not isinstance(data, TaskData):
        return [f"returned {type(data).__name__}, not workers.tasks.TaskData"]
    p = []
    if data.kind not in (*KINDS, CUSTOM):
        p.append(f"kind {data.kind!r} is not one of: {', '.join([*KINDS, CUSTOM])}")
    if data.kind == CUSTOM and (data.loss is None or not data.metrics):
        p.append("kind 'custom' needs both loss and metrics")
    for name, entry in dict(data.metrics).items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
            p.append(f"metrics[{name!r}] must be (function, 'max' or 'min'), got {entry!r}")
        elif entry[1] not in ("max", "min"):
            p.append(f"metrics[{name!r}] mode must be 'max' or 'min', got {entry[1]!r}")
    if not isinstance(data.splits, Mapping) or set(data.splits) != set(SPLITS):
        got = sorted(data.splits) if isinstance(data.splits, Mapping) else data.splits
        return p + [
            f"splits must be {{'train', 'val', 'test'}}: (x, y) or a Dataset each; got {got!r}"
        ]
    kinds = {isinstance(v, tuple) for v in data.splits.values()}
    if len(kinds) > 1:
        return p + ["splits must all be (x, y) in memory or all datasets"]
    if data.preprocess is not None and not data.in_memory:
        p.append("preprocess applies to in-memory splits; a Dataset transforms its own items")
    if data.preprocess is not None and data.pipeline is None and data.in_memory:
        return p + _check_raw(data)
    if data.in_memory:
        bad = [s for s, v in data.splits.items() if len(v) != 2 or v[0] is None or v[1] is None]
        p += [f"splits[{s!r}] must be (x, y)" for s in bad] or _check_tensors(data)
    if not (isinstance(data.num_classes, int) and data.num_classes >= 1):
        p.append(f"num_classes (the model's output width) must be >= 1, got {data.num_classes!r}")
    if inputs.shapes(data.input_shape) is None:
        p.append(
            "input_shape must be positive ints, or one such shape per input tensor, "
            f"got {data.input_shape!r}"
        )
    return p


def _check_raw(data: TaskData) -> list[str]:
    """Raw splits: rows against targets; the model inputs are checked once prepared."""
    p = []
    for split in SPLITS:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x is None or y is None:
            p.append(f"needs x_{split} and y_{split}")
        elif len(x) != len(y) or len(y) == 0:
            p.append(f"x_{split} has {len(x)} rows but y_{split} has {len(y)}")
    if data.target_scale is not None and data.kind != "regression":
        p.append(f"target_scale is for regression; kind is {data.kind!r}")
    return p


def _check_tensors(data: TaskData) -> list[str]:
    p = []
    declared = inputs.shapes(data.input_shape) or []
    for split in SPLITS:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        tensors = inputs.parts(x)
        if inputs.is_multi(x) != inputs.is_multi_shape(data.input_shape):
            p.append(
                f"x_{split} is {len(tensors)} tensor(s), input_shape {data.input_shape!r} says "
                f"{len(declared)}"
            )
            continue
        if any(len(t) != len(y) for t in tensors):
            p.append(f"x_{split} has {[len(t) for t in tensors]} rows but y_{split} has {len(y)}")
        if len(y) == 0:
            p.append(f"x_{split} is empty")
        found = [tuple(t.shape[1:]) for t in tensors]
        if found != declared:
            shape = found if inputs.is_multi(x) else found[0]
            p.append(f"x_{split} examples are {shape}, input_shape says {data.input_shape}")
        if data.kind == "classification" and y.dtype != torch.int64:
            p.append(f"classification labels must be int64 class ids; y_{split} is {y.dtype}")
    return p


SPLITS = ("train", "val", "test")


def split_arrays(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    kind: str = "classification",
    preprocess: Any = None,
    scale_target: bool = False,
    **fields: Any,
) -> TaskData:
    """Deterministic train/val/test split of ``x, y`` from ``seed``: stratified by class for
    classification, uniform otherwise.

    Float inputs become float32 and integer inputs (token ids) int64; classification labels
    int64, regression and multilabel targets float32. If ``test`` is given (a data set with an
    official test split), it is the test split and only validation is carved out of ``x``.
    ``fields`` go to :class:`TaskData` (``feature_names``, ``extra``, ``loss``, ...).

    With ``preprocess`` (a module, or a fitter ``x_train -> module`` such as
    ``_pipeline.standardize``), inputs keep the dtype the user has (float64, uint8) and the
    fitter sees the training split only; ``scale_target`` (regression) sets ``target_scale``
    from the training targets.
    """
    raw = preprocess is not None
    x, y = (_input_array(x) if not raw else np.asarray(x)), _target_array(y, kind)
    rng = np.random.default_rng(seed)
    split = stratified_split if kind == "classification" else random_split
    if test is None:
        rest, held = split(y, test_fraction, rng)
        x, x_te, y, y_te = x[rest], x[held], y[rest], y[held]
        val_size = val_fraction / (1.0 - test_fraction)
    else:
        x_te, y_te = (
            (np.asarray(test[0]) if raw else _input_array(test[0])),
            _target_array(test[1], kind),
        )
        val_size = val_fraction
    rest, held = split(y, val_size, rng)
    x_tr, x_va, y_tr, y_va = x[rest], x[held], y[rest], y[held]
    t = lambda a: torch.from_numpy(np.require(a, requirements=["C", "W"]))  # noqa: E731
    if kind == "classification":
        outputs = int(max(y_tr.max(), y_va.max(), y_te.max()) + 1)
    else:
        outputs = 1 if y.ndim == 1 else int(y.shape[1])
    fields.setdefault("num_classes", outputs)
    if preprocess is not None and not isinstance(preprocess, torch.nn.Module):
        preprocess = preprocess(t(x_tr))  # a fitter: fitted on the training split only
    if scale_target:
        fields["target_scale"] = (y_tr.mean(0).tolist(), y_tr.std(0).tolist())
    return TaskData(
        name=name,
        splits={
            "train": (t(x_tr), t(y_tr)),
            "val": (t(x_va), t(y_va)),
            "test": (t(x_te), t(y_te)),
        },
        input_shape=tuple(x_tr.shape[1:]),
        kind=kind,
        preprocess=preprocess,
        **fields,
    )


def _input_array(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64, copy=False)  # token or category ids stay integers
    return x.astype(np.float32, copy=False)


def _target_array(y: np.ndarray, kind: str) -> np.ndarray:
    return np.asarray(y).astype(np.int64 if kind == "classification" else np.float32, copy=False)


def random_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, held)``: ``fraction`` of the rows held out at random, both shuffled."""
    order = rng.permutation(len(y))
    n_held = int(round(fraction * len(y)))
    return order[n_held:], order[:n_held]


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, held)``: ``fraction`` of each class held out at random, both shuffled.

    Plain numpy on purpose: scikit-learn's ``train_test_split`` costs a ~1.5 s import in every
    new trial process, for a few lines of work.
    """
    held = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held.append(members[: int(round(fraction * len(members)))])
    held_idx = np.concatenate(held)
    keep = np.ones(len(y), dtype=bool)
    keep[held_idx] = False
    return rng.permutation(np.flatnonzero(keep)), rng.permutation(held_idx)


def task_names() -> list[str]:
    return TASKS.names()


@functools.lru_cache(maxsize=4)
def load_task(name: str, seed: int) -> TaskData:
    """Load a task by registry name or ``module:function``, prepared for training
    (:func:`workers.tasks._pipeline.prepare`: model inputs, the registered graph's parts);
    cached per process.

    The cache matters: a reused Ray actor runs many trials, and Fashion-MNIST takes a second to
    decode.

    Raises:
        UnknownNameError: ``name`` is neither registered nor a plug-in reference.
        WorkerError: the builder's result does not follow the protocol (:func:`check_task_data`).
    """
    builder = load_plugin(name) if is_plugin_ref(name) else TASKS.get(name)
    data = builder(seed)
    problems = check_task_data(data)
    if not problems:
        try:
            data = prepare(data)
        except Exception as e:  # noqa: BLE001 - the task's own preprocessing: name the task
            raise WorkerError(f"task {name!r}: its preprocess failed: {e}") from e
        problems = check_task_data(data)
    if problems:
        raise WorkerError(f"task {name!r}: " + "; ".join(problems))
    return data
