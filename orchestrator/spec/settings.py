"""The plain settings sections: ``search``, ``resources``, ``tracking``, ``cluster`` and
``promotion`` (never search spaces)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Required

from annotated_types import Ge, MinLen
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    with_config,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import TypedDict

from orchestrator.spec.checks import (
    Bool,
    NonNegative,
    OneOf,
    PositiveInt,
    Says,
    Shown,
    Text,
    _Number,
)
from orchestrator.spec.spaces import (
    invalid,
    is_space,
    problem,
)
from tracking import keys
from tracking.selection import PICKS, STRATEGIES, check_policy
from workers.storage import location_problem

SCHEDULERS = ("asha", "fifo", "hyperband", "median", "pbt")
SEARCHERS = ("bohb", "grid", "motpe", "nsga2", "optuna", "random")
# Searchers with a model of the space, which earlier trials can seed (search.warm_start).
MODEL_BASED = ("bohb", "motpe", "nsga2", "optuna")
# Searchers of the Pareto front of promotion.objectives: they need two or more objectives.
MULTI_OBJECTIVE = ("motpe", "nsga2")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
AUTO_GPU = "auto"  # resources.gpu: the runner measures a trial and picks its share of a GPU


# --------------------------------------------------------------------------- settings sections

SETTINGS = ConfigDict(extra="forbid", regex_engine="python-re", use_attribute_docstrings=True)


@dataclass(config=SETTINGS)
class _Settings:
    @field_validator("*", mode="before")
    @classmethod
    def _no_spaces(cls, value: Any) -> Any:
        if is_space(value):
            raise PydanticCustomError("spec", "a search space is not allowed here")
        return value


@with_config(ConfigDict(extra="forbid"))
class WarmStart(TypedDict, total=False):
    """Earlier trials that seed a model-based searcher."""

    experiment: Required[
        Annotated[StrictStr, StringConstraints(pattern=NAME_RE.pattern),
                  Says("must be an experiment's name")]
    ]  # fmt: skip
    top: Annotated[PositiveInt, Field(description="how many of its best finished trials (50)")]
    rerun: Annotated[
        StrictInt, Ge(0), Field(description="how many of them to train again first (1)"),
        Says("must be a whole number 0 or more, got {v}"),
    ]  # fmt: skip


@dataclass(config=SETTINGS)
class SearchSpec(_Settings):
    """How trials are chosen and stopped (never a search space itself)."""

    num_samples: PositiveInt = 8
    """trials to sample (with grid: repeats of the grid)"""
    scheduler: Annotated[str, OneOf(SCHEDULERS)] = "asha"
    """trial scheduler"""
    searcher: Annotated[str, OneOf(SEARCHERS)] = "random"
    """how configs are proposed"""
    metric: Annotated[StrictStr, MinLen(1), Says("must be a metric name, got {v}")] = "val_accuracy"
    """the per-epoch metric schedulers and searchers optimise"""
    mode: Annotated[str, OneOf(("max", "min"))] = "max"
    """max or min"""
    max_concurrent: PositiveInt | None = None
    """trials at once (default: as many as resources allow)"""
    grace_period: PositiveInt = 1
    """epochs before asha/hyperband/median may stop a trial"""
    warm_start: Annotated[
        dict[str, Any],  # what the sweep reads; WarmStart is what validates it
        GetPydanticSchema(lambda _, handler: handler(WarmStart)),
        Says("must be a mapping {experiment: NAME, top: K, rerun: R}"),
    ] | None = None  # fmt: skip
    """{experiment: NAME, top: K, rerun: R}: seed a model-based searcher with the K best finished
    trials of that experiment's sweeps whose configs fit this space (default K 50), and train
    the R best of them again first (default 1, 0 for none)"""


@dataclass(config=SETTINGS)
class ResourcesSpec(_Settings):
    """What one trial asks Ray for."""

    cpu: NonNegative = 1.0
    """CPUs per trial"""
    gpu: Annotated[
        Annotated[_Number, Ge(0), Shown(core_schema.float_schema(ge=0))] | Literal["auto"],
        Says(f"must be a number >= 0 or {AUTO_GPU!r}, got {{v}}"),
    ] = 0.0
    """GPUs per trial; fractions share a GPU (0.25: four trials per GPU, each capped at a quarter
    of its memory); 'auto': the share that one trial's measured memory needs (1, 1/2, 1/4 or
    1/8, decided before the sweep starts)"""
    tpu: NonNegative = 0.0
    """TPU chips per trial (Ray custom resource 'TPU')"""
    memory_mb: PositiveInt | None = None
    """memory reserved per trial, in MiB"""


@dataclass(config=SETTINGS)
class TrackingSpec(_Settings):
    """Where runs are recorded; the CLI flag and MLFLOW_TRACKING_URI take precedence over uri."""

    uri: Text | None = None
    """MLflow tracking URI (sqlite:///..., postgresql+psycopg2://..., http://...)"""
    artifact_location: Text | None = None
    """artifact root for a new experiment"""


def _storage(location: str) -> str:
    # A folder, or an object-store URI read and written through pyarrow (checked without I/O).
    if why := location_problem(location):
        raise PydanticCustomError("spec", "{m}", {"m": why})
    return location


@dataclass(config=SETTINGS)
class ClusterSpec(_Settings):
    """Which Ray cluster runs the trials."""

    address: Text | None = None
    """None: a local Ray; 'auto', 'ray://host:port' or 'host:port'"""
    storage_path: Annotated[
        StrictStr, MinLen(1), AfterValidator(_storage),
        Says("must be a folder or an object-store URI (s3://BUCKET/PREFIX), got {v}"),
    ] | None = None  # fmt: skip
    """where Tune's state and trial checkpoints go: a folder (on a cluster, one every node mounts)
    or object storage, s3://BUCKET/PREFIX or gs://... (default $PODIUM_STORAGE_PATH, else
    ./podium-runs/ray_results)"""
    max_failures: Annotated[StrictInt, Ge(0), Says("must be an integer >= 0, got {v}")] = 2
    """times a trial is restarted from its checkpoint after a worker dies"""


class Objective(TypedDict, total=False):
    metric: Required[str]
    mode: Annotated[str, OneOf(("max", "min"))]


POLICY = ("objectives", "constraints", "strategy", "pick", "weights", "min_improvement")


@dataclass(config=SETTINGS)
class PromotionSpec(_Settings):
    """How the best trial is chosen and registered."""

    model_name: Annotated[
        StrictStr, StringConstraints(pattern=NAME_RE.pattern),
        Says("{v}: a registered model's name starts with a letter or digit, then letters, "
             "digits, '_', '.', '-' (at most 100)"),
    ] | None = None  # fmt: skip
    """registered model name (default: the experiment name)"""
    alias: Annotated[
        StrictStr, StringConstraints(pattern=r"^(?!latest$|v\d+$)[A-Za-z_][A-Za-z0-9_-]*$"),
        Says("an alias is a name like 'champion' (not 'latest' nor v<number>)"),
    ] = "champion"  # fmt: skip
    """registry alias the winner receives"""
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric=keys.TEST_ACCURACY, mode="max")],
        description="[{metric, mode}]: the first decides, the rest break ties (strategy best)",
    )
    constraints: list[str] = Field(
        default_factory=list,
        description="e.g. 'latency_ms_p50 <= 1.0'; infeasible trials never win",
    )
    strategy: Annotated[str, OneOf(STRATEGIES)] = "best"
    """best, or pareto"""
    pick: Annotated[str, OneOf(PICKS)] = "knee"
    """how pareto picks one point: knee or weighted"""
    weights: list[Annotated[_Number, Shown(core_schema.float_schema())]] | None = None
    """per-objective weights for pick: weighted"""
    min_improvement: Annotated[_Number, Shown(core_schema.float_schema())] = 0.0
    """a challenger must beat the champion by this much"""
    selection_split: Annotated[str, OneOf(("validation", "test"))] = "validation"
    """validation: a sweep chooses its winner with each test_ objective and constraint read on its
    val_ twin, and the test split only compares champion and challenger; test: choose on the
    test split too (its score of the winner is then optimistic)"""
    enabled: Bool = True
    """register and alias the winner at the end of the sweep"""

    @field_validator(*POLICY, mode="before")
    @classmethod
    def _policy(cls, value: Any, info: ValidationInfo) -> Any:
        # tracking.selection's rules (a --policy file is checked by the same); weights are
        # counted against the objectives checked before them.
        name = info.field_name or ""
        found = [
            problem(bad, msg, (key.removeprefix(name),))
            for key, bad, msg in check_policy({**info.data, name: value})
            if re.match(rf"{name}\b", key)
        ]
        if found:
            raise invalid(found)
        return value
