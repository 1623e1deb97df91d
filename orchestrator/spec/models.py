"""The experiment spec as pydantic models: one description per field, the checks in the types.

``model``, ``optimizer``, ``training`` and ``recipe`` are searchable: any value may be a search
space (:data:`~orchestrator.spec.spaces.Searchable`), the whole section a choice of sections, and
they stay plain dicts in the typed spec (their keys depend on the chosen arch or optimizer); the
``*Keys`` models below check them and document their keys. The other sections are plain settings.

Pydantic's own messages ("Input should be greater than 0") do not say what is valid, so each
type carries ours (:class:`Says`); a rule across fields runs on the raw sections, so that it is
reported with every other problem (pydantic skips an after-validator once a field fails).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, field
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Lt, MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
    with_config,
)
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema
from typing_extensions import Required, TypedDict

from orchestrator.spec.spaces import (
    RANGES,
    Searchable,
    again,
    invalid,
    is_number,
    is_space,
    problem,
    space_candidates,
    space_kind,
    space_problem,
)
from tracking import keys
from tracking.selection import PICKS, STRATEGIES, check_policy
from workers.adversarial import check_adversarial
from workers.models import MODELS
from workers.optimizers import OPTIMIZERS, check_hparams
from workers.optimizers.schedules import check_schedule
from workers.recipes import STEPS, check_qat_order, check_recipe
from workers.registry import PLUGIN_REF, is_plugin_ref
from workers.storage import location_problem
from workers.tasks import TASKS

SCHEDULERS = ("asha", "fifo", "hyperband", "median", "pbt")
SEARCHERS = ("bohb", "grid", "motpe", "nsga2", "optuna", "random")
# Searchers with a model of the space, which earlier trials can seed (search.warm_start).
MODEL_BASED = ("bohb", "motpe", "nsga2", "optuna")
# Searchers of the Pareto front of promotion.objectives: they need two or more objectives.
MULTI_OBJECTIVE = ("motpe", "nsga2")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
AUTO_GPU = "auto"  # resources.gpu: the runner measures a trial and picks its share of a GPU


# --------------------------------------------------------------------------- messages


class Says:
    """A type's message for a value pydantic refuses (``{v}``: the value): "must be a positive
    integer, got 0" where pydantic says "Input should be greater than 0". Problems of the
    value's own parts (a setting inside a section) and unknown keys pass through as they are."""

    KEEP = {"spec", "extra_forbidden", "unexpected_keyword_argument", "missing"}

    def __init__(self, template: str) -> None:
        self.template = template

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        def validate(value: Any, check: Any) -> Any:
            try:
                return check(value)
            except ValidationError as e:
                kept = [x for x in e.errors() if x["type"] in self.KEEP]
                says = [problem(value, self.template.replace("{v}", repr(value)))]
                raise invalid(again(kept) + (says if len(kept) < e.error_count() else [])) from None

        return core_schema.no_info_wrap_validator_function(validate, handler(source))


class OneOf:
    """One of ``names`` (a registry's, say), or a ``module:function`` plug-in if ``plugins``."""

    def __init__(self, names: tuple[str, ...] | list[str], plugins: bool = False) -> None:
        self.names, self.plugins = list(names), plugins

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        valid = ", ".join(self.names) + (" (or module:function)" if self.plugins else "")

        def check(v: Any) -> Any:
            if v in self.names or (self.plugins and is_plugin_ref(v)):
                return v
            raise PydanticCustomError("spec", "{m}", {"m": f"{v!r} is not one of: {valid}"})

        names = core_schema.literal_schema(self.names)
        ref = core_schema.str_schema(pattern=PLUGIN_REF.pattern)
        shown = core_schema.union_schema([names, ref]) if self.plugins else names
        return core_schema.no_info_plain_validator_function(check, json_schema_input_schema=shown)


class Shown:
    """How a type is shown in the JSON Schema, where pydantic's own would be wrong or noisy."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_wrap_validator_function(
            lambda v, check: check(v), handler(source), json_schema_input_schema=self.schema
        )


_Number = StrictInt | StrictFloat  # a YAML int stays an int: the spec hash and dump keep it
PositiveInt = Annotated[StrictInt, Gt(0), Says("must be a positive integer, got {v}")]
Integer = Annotated[StrictInt, Says("must be an integer, got {v}")]
Bool = Annotated[StrictBool, Says("must be true or false, got {v}")]
Text = Annotated[StrictStr, Says("must be a string, got {v}")]
NonNegative = Annotated[
    _Number, Ge(0), Shown(core_schema.float_schema(ge=0)),
    Says("must be a number >= 0, got {v}"),
]  # fmt: skip
Fraction = Annotated[
    _Number, Ge(0), Lt(1), Shown(core_schema.float_schema(ge=0, lt=1)),
    Says("must be in [0, 1), got {v}"),
]  # fmt: skip
Positive = Annotated[
    _Number, Gt(0), Shown(core_schema.float_schema(gt=0)),
    Says("must be > 0, got {v}"),
]  # fmt: skip
Widths = Annotated[
    list[Annotated[StrictInt, Gt(0)]], MinLen(0), Says("must be a list of positive integers, got {v}")
]
# Any value of a searchable section: the schema reads a mapping as a space (so a misspelt kind,
# {uniformm: ...}, is caught), validation leaves the value to its builder's checks.
Plain = Annotated[Any, Shown(core_schema.union_schema([
    core_schema.str_schema(), core_schema.float_schema(), core_schema.bool_schema(),
    core_schema.none_schema(), core_schema.list_schema(),
]))]  # fmt: skip
Mapping = Annotated[dict[str, Any], Says("must be a mapping, got {v}")]
Identifier = Annotated[
    StrictStr, StringConstraints(pattern=r"^[A-Za-z_]\w*$"),
    Says("must be the name of an output (an attribute or key, e.g. logits), got {v}"),
]  # fmt: skip


def _described(text: str, default: Any = None, **kw: Any) -> Any:
    return Field(default, description=text, **kw)


# --------------------------------------------------------------------------- searchable sections


class Section:
    """A searchable section: a mapping ``shape`` checks (a list of steps for the recipe), or a
    choice or grid of them (a conditional space). The user's own dict is what the spec keeps."""

    def __init__(self, shape: Any, container: type = dict) -> None:
        self.shape, self.container = shape, container

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        one = handler.generate_schema(self.shape)
        some = core_schema.list_schema(one, min_length=1)
        branches = core_schema.typed_dict_schema(
            {k: core_schema.typed_dict_field(some, required=False) for k in ("choice", "grid")},
            extra_behavior="forbid",
        )
        shown = core_schema.union_schema([one, branches])
        return core_schema.no_info_wrap_validator_function(
            self._validate, one, json_schema_input_schema=shown
        )

    def _validate(self, value: Any, check: Callable[[Any], Any]) -> Any:
        if not is_space(value):
            if not isinstance(value, self.container):
                kind = "list" if self.container is list else "mapping"
                raise invalid([problem(value, f"must be a {kind}, got {value!r}")])
            check(value)
            return value
        if space_kind(value) not in ("choice", "grid"):
            why = "a whole section can only be a choice or grid of sections"
            raise invalid([problem(value, why)])
        if why := space_problem(value):
            raise invalid([problem(value, why)])
        errors: list[InitErrorDetails] = []
        for i, branch in enumerate(space_candidates(value)):
            try:
                self._validate(branch, check)
            except ValidationError as e:
                errors += again(e.errors(), (i,))
        if errors:
            raise invalid(errors)
        return value


def _plugins_only(data: dict[str, Any]) -> bool:
    """Whether every arch a model section can have is a plug-in (a valid arch; else False)."""
    arch = data.get("arch")
    archs = space_candidates(arch) if is_space(arch) else [arch]
    return bool(archs) and all(is_plugin_ref(a) for a in archs)


class ModelKeys(BaseModel):
    """The model: ``arch`` and the settings its builder's signature takes (a plug-in's own are
    checked against its signature once it is imported)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Searchable[Plain]]  # type: ignore[assignment]

    arch: Searchable[Annotated[str, OneOf(MODELS.names(), plugins=True)]] = _described(
        "mlp, cnn, a text model, or module:function (a builder of input_shape, num_classes)",
        "mlp",
    )
    hidden: Searchable[Widths] = _described("hidden layer widths (mlp, cnn)", [128, 64])
    channels: Searchable[Widths] = _described("convolution channels (cnn)", None)
    batch_norm: Searchable[Bool] = _described("batch norm after each hidden layer", False)
    dropout: Searchable[Fraction] = _described("dropout after each hidden layer", 0.0)
    output: Searchable[Identifier] = _described(
        "which output of a plug-in model holds the logits", None, alias=keys.MODEL_OUTPUT
    )

    @field_validator("hidden", "channels", "batch_norm", "dropout", mode="wrap")
    @classmethod
    def _builtin_rules(cls, value: Any, check: Any, info: ValidationInfo) -> Any:
        # A plug-in's `hidden` is its own (an int, say): mlp's rule holds where mlp can be the arch.
        return value if _plugins_only(info.data) else check(value)

    @field_validator("output", mode="wrap")
    @classmethod
    def _plugin_output(cls, value: Any, check: Any, info: ValidationInfo) -> Any:
        if not _plugins_only(info.data):
            why = "names the logits among a plug-in model's outputs; built-in archs return logits"
            raise invalid([problem(value, why)])
        return check(value)


COND = "; make it conditional with a choice of optimizer sections"


class OptimizerKeys(BaseModel):
    """The optimizer: its ``name``, ``lr`` and that optimizer's own hyperparameters."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Searchable[Plain]]  # type: ignore[assignment]

    name: Searchable[Annotated[Any, OneOf(OPTIMIZERS.names())]] = _described(
        "the optimizer (workers/optimizers)", None, validate_default=True
    )

    @model_validator(mode="after")
    def _hyperparameters(self) -> OptimizerKeys:
        # Each value (each candidate of a space) against each optimizer the name can be.
        names = _values(self.name)
        found = [
            problem(bad, msg + (COND if len(names) > 1 else ""), (key,))
            for key, value in (self.model_extra or {}).items()
            for candidate in _values(value)
            for name in names
            for _, bad, msg in check_hparams(name, {key: candidate})
        ]
        if found:
            raise invalid(found)
        return self


def _values(value: Any) -> list[Any]:
    """A value, or a (well-formed) space's candidates."""
    return space_candidates(value) if is_space(value) else [value]


def _variants(section: dict[str, Any], check: Callable) -> list[tuple[str, Any, str]]:
    """A worker's check of a section (``(key, value, message)`` problems) run on each candidate
    of each of its leaf spaces, bounds included: the worker knows its keys, not spaces."""
    out, malformed = [], False
    for key, value in section.items():
        if is_space(value):
            why = space_problem(value)
            out += [(key, value, why)] if why else []
            malformed = malformed or bool(why)
            for candidate in [] if why else space_candidates(value):
                out += check({**section, key: candidate})
    if not malformed:  # a malformed space has no candidates to try
        out += check({k: _values(v)[0] for k, v in section.items()})
    return out


def _checked_by(check: Callable) -> Any:
    def validate(section: dict[str, Any]) -> dict[str, Any]:
        if found := _variants(section, check):
            raise invalid([problem(v, m, (k,)) for k, v, m in found])
        return section

    return AfterValidator(validate)


class TrainingKeys(BaseModel):
    """How each trial trains."""

    model_config = ConfigDict(extra="forbid")

    max_epochs: Searchable[PositiveInt] = _described("epochs per trial (its budget)", 10)
    batch_size: Searchable[PositiveInt | None] = _described("None: the task's own", None)
    seed: Searchable[Integer] = _described("seed of the data split and the model's weights", 0)
    l1_penalty: Searchable[NonNegative] = _described("L1 weight penalty per update", 0.0)
    lr_schedule: Annotated[Mapping, _checked_by(check_schedule)] | None = _described(
        "{name: none | step | cosine | onecycle, ...}: the learning rate per epoch", None
    )
    adversarial: Annotated[Mapping, _checked_by(check_adversarial)] | None = _described(
        "{attack: fgsm | pgd, epsilon, ...}: train on attacked inputs too", None
    )
    checkpoint_every: Searchable[PositiveInt] = _described("epochs between checkpoints", 1)
    grad_clip: Searchable[Positive | None] = _described(
        "max total L2 norm of the gradients before each update; None: off", None
    )
    accumulate: Searchable[PositiveInt] = _described("batches whose gradients make one update", 1)
    label_smoothing: Searchable[Fraction] = _described(
        "classification: cross-entropy against smoothed targets", 0.0
    )
    patience: Searchable[PositiveInt | None] = _described(
        "end a trial after this many epochs without a better search.metric", None
    )
    keep: Searchable[Annotated[Literal["best", "last"], Says("must be 'best' or 'last', got {v}")]] = _described(
        "best: the epoch with the best search.metric (a val_ metric) is tested, registered and "
        "reported as the trial's; last: the last epoch trained",
        "best",
    )
    # Used only where Ray gives the trial a GPU (workers/device.py).
    amp: Searchable[Bool] = _described("bf16 autocast of the forward pass (GPU only)", False)
    cudnn_benchmark: Searchable[Bool] = _described("cuDNN autotuning (GPU only)", False)


class RecipeStep(BaseModel):
    """One compression step: ``step`` and that step's own settings (workers/recipes)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Searchable[Plain]]  # type: ignore[assignment]

    step: Annotated[str, OneOf(STEPS.names())] = Field(description="the step")


def _check_steps(steps: list[Any]) -> list[Any]:
    """Each step checked by its worker (each candidate of its spaces), then their order."""
    found = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            found.append(problem(step, "each recipe step must be a mapping with 'step'", (i,)))
            continue
        for sub, value, msg in _variants(step, lambda s: check_recipe([s])):
            found.append(problem(value, msg, (i, sub.removeprefix("[0]").lstrip("."))))
    order = check_qat_order([_qat_if_possible(s) for s in steps])
    found += [problem(value, msg, (sub,)) for sub, value, msg in order]
    if found:
        raise invalid(found)
    return steps


def _qat_if_possible(step: Any) -> Any:
    """A step as the order check must see it: quantize mode ``qat`` if any sample can be."""
    mode = step.get("mode") if isinstance(step, dict) else None
    if not is_space(mode):
        return step
    can_be_qat = not space_problem(mode) and "qat" in space_candidates(mode)
    return {**step, "mode": "qat" if can_be_qat else None}


Steps = Annotated[list[Any], PlainValidator(_check_steps, json_schema_input_type=list[RecipeStep])]


# --------------------------------------------------------------------------- settings sections

SETTINGS = ConfigDict(extra="forbid", regex_engine="python-re")


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

    num_samples: PositiveInt = _described("trials to sample (with grid: repeats of the grid)", 8)
    scheduler: Annotated[str, OneOf(SCHEDULERS)] = _described("trial scheduler", "asha")
    searcher: Annotated[str, OneOf(SEARCHERS)] = _described("how configs are proposed", "random")
    metric: Annotated[StrictStr, MinLen(1), Says("must be a metric name, got {v}")] = _described(
        "the per-epoch metric schedulers and searchers optimise", "val_accuracy"
    )
    mode: Annotated[str, OneOf(("max", "min"))] = _described("max or min", "max")
    max_concurrent: PositiveInt | None = _described(
        "trials at once (default: as many as resources allow)", None
    )
    grace_period: PositiveInt = _described("epochs before asha/hyperband/median may stop a trial", 1)
    warm_start: Annotated[
        WarmStart, Says("must be a mapping {experiment: NAME, top: K, rerun: R}")
    ] | None = _described(
        "{experiment: NAME, top: K, rerun: R}: seed a model-based searcher with the K best "
        "finished trials of that experiment's sweeps whose configs fit this space (default K "
        "50), and train the R best of them again first (default 1, 0 for none)",
        None,
    )


@dataclass(config=SETTINGS)
class ResourcesSpec(_Settings):
    """What one trial asks Ray for."""

    cpu: NonNegative = _described("CPUs per trial", 1.0)
    gpu: Annotated[
        Annotated[_Number, Ge(0), Shown(core_schema.float_schema(ge=0))] | Literal["auto"],
        Says(f"must be a number >= 0 or {AUTO_GPU!r}, got {{v}}"),
    ] = _described(
        "GPUs per trial; fractions share a GPU (0.25: four trials per GPU, each capped at a "
        "quarter of its memory); 'auto': the share that one trial's measured memory needs "
        "(1, 1/2, 1/4 or 1/8, decided before the sweep starts)",
        0.0,
    )
    tpu: NonNegative = _described("TPU chips per trial (Ray custom resource 'TPU')", 0.0)
    memory_mb: PositiveInt | None = _described("memory reserved per trial, in MiB", None)


@dataclass(config=SETTINGS)
class TrackingSpec(_Settings):
    """Where runs are recorded; the CLI flag and MLFLOW_TRACKING_URI take precedence over uri."""

    uri: Text | None = _described(
        "MLflow tracking URI (sqlite:///..., postgresql+psycopg2://..., http://...)", None
    )
    artifact_location: Text | None = _described("artifact root for a new experiment", None)


def _storage(location: str) -> str:
    # A folder, or an object-store URI read and written through pyarrow (checked without I/O).
    if why := location_problem(location):
        raise PydanticCustomError("spec", "{m}", {"m": why})
    return location


@dataclass(config=SETTINGS)
class ClusterSpec(_Settings):
    """Which Ray cluster runs the trials."""

    address: Text | None = _described(
        "None: a local Ray; 'auto', 'ray://host:port' or 'host:port'", None
    )
    storage_path: Annotated[
        StrictStr, MinLen(1), AfterValidator(_storage),
        Says("must be a folder or an object-store URI (s3://BUCKET/PREFIX), got {v}"),
    ] | None = _described(
        "where Tune's state and trial checkpoints go: a folder (on a cluster, one every node "
        "mounts) or object storage, s3://BUCKET/PREFIX or gs://... (default "
        "$PODIUM_STORAGE_PATH, else ./podium-runs/ray_results)",
        None,
    )  # fmt: skip
    max_failures: Annotated[StrictInt, Ge(0), Says("must be an integer >= 0, got {v}")] = (
        _described("times a trial is restarted from its checkpoint after a worker dies", 2)
    )


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
    ] | None = _described("registered model name (default: the experiment name)", None)  # fmt: skip
    alias: Annotated[
        StrictStr, StringConstraints(pattern=r"^(?!latest$|v\d+$)[A-Za-z_][A-Za-z0-9_-]*$"),
        Says("an alias is a name like 'champion' (not 'latest' nor v<number>)"),
    ] = _described("registry alias the winner receives", "champion")  # fmt: skip
    objectives: list[Objective] = Field(
        default_factory=lambda: [{"metric": keys.TEST_ACCURACY, "mode": "max"}],
        description="[{metric, mode}]: the first decides, the rest break ties (strategy best)",
    )
    constraints: list[str] = Field(
        default_factory=list,
        description="e.g. 'latency_ms_p50 <= 1.0'; infeasible trials never win",
    )
    strategy: Annotated[str, OneOf(STRATEGIES)] = _described("best, or pareto", "best")
    pick: Annotated[str, OneOf(PICKS)] = _described(
        "how pareto picks one point: knee or weighted", "knee"
    )
    weights: list[Annotated[_Number, Shown(core_schema.float_schema())]] | None = _described("per-objective weights for pick: weighted", None)
    min_improvement: Annotated[_Number, Shown(core_schema.float_schema())] = _described("a challenger must beat the champion by this much", 0.0)
    selection_split: Annotated[str, OneOf(("validation", "test"))] = _described(
        "validation: a sweep chooses its winner with each test_ objective and constraint read "
        "on its val_ twin, and the test split only compares champion and challenger; test: "
        "choose on the test split too (its score of the winner is then optimistic)",
        "validation",
    )
    enabled: Bool = _described("register and alias the winner at the end of the sweep", True)

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


# --------------------------------------------------------------------------- the spec

MODEL_DEFAULTS: dict[str, Any] = {
    k: f.default for k, f in ModelKeys.model_fields.items() if f.default is not None
}
TRAINING_DEFAULTS: dict[str, Any] = {k: f.default for k, f in TrainingKeys.model_fields.items()}
OPTIMIZER_DEFAULT = {"name": "adam", "lr": 0.001}
SETTING_SECTIONS: dict[str, Any] = {
    "search": SearchSpec,
    "resources": ResourcesSpec,
    "tracking": TrackingSpec,
    "cluster": ClusterSpec,
    "promotion": PromotionSpec,
}


def _settings(what: str) -> Any:
    return Annotated[SETTING_SECTIONS[what], Says("must be a mapping of settings, got {v}")]


@dataclass(config=ConfigDict(extra="forbid"))
class ExperimentSpec:
    """One experiment. ``model``, ``optimizer``, ``training`` and ``recipe`` may hold search spaces;
    the other sections are plain settings."""

    name: Annotated[
        StrictStr, StringConstraints(pattern=NAME_RE.pattern),
        Says("required: letters, digits, '_', '.', '-' (at most 100), got {v}"),
    ] = Field(description="experiment name: MLflow experiment and default registered-model name")  # fmt: skip
    task: Searchable[Annotated[Any, OneOf(TASKS.names(), plugins=True)]] = _described(
        "data set: digits, fashion-mnist, breast_cancer, wine, diabetes, rotten-tomatoes, or "
        "module:function (a function of the split seed returning workers.tasks.TaskData)",
        "digits",
    )
    model: Annotated[dict[str, Any], Section(ModelKeys)] = Field(
        default_factory=lambda: dict(MODEL_DEFAULTS),
        description="arch (mlp, cnn, a text model, module:function) and the settings its "
        "builder's signature takes (mlp: hidden, batch_norm, dropout; cnn: also channels)",
    )
    optimizer: Annotated[Any, Section(OptimizerKeys)] = Field(
        default_factory=lambda: dict(OPTIMIZER_DEFAULT),
        description="name, lr and the optimizer's own hyperparameters",
    )
    training: Annotated[dict[str, Any], Section(TrainingKeys)] = Field(
        default_factory=lambda: dict(TRAINING_DEFAULTS),
        description="max_epochs, batch_size, seed, l1_penalty, lr_schedule, adversarial, "
        "grad_clip, accumulate, label_smoothing, patience, keep (best | last: the epoch that ships)",
    )
    recipe: Annotated[Any, Section(Steps, list)] = Field(
        default_factory=list, description="compression steps applied after training, in order"
    )
    search: _settings("search") = Field(
        default_factory=SearchSpec, description="trial proposal and scheduling"
    )
    resources: _settings("resources") = Field(
        default_factory=ResourcesSpec, description="per-trial resources"
    )
    tracking: _settings("tracking") = Field(
        default_factory=TrackingSpec, description="MLflow location"
    )
    cluster: _settings("cluster") = Field(default_factory=ClusterSpec, description="Ray cluster")
    promotion: _settings("promotion") = Field(
        default_factory=PromotionSpec, description="model selection and registry"
    )
    # Where plug-ins are imported from, first wins (the spec file's folder, then the working
    # directory): set by parse_spec; not a setting, so never dumped nor read from a spec file.
    plugin_roots: SkipJsonSchema[tuple[str, ...]] = field(default=(), init=False, repr=False, compare=False)
    # What is allowed but probably not meant, as "path: why" lines (the CLI prints them).
    warnings: SkipJsonSchema[tuple[str, ...]] = field(default=(), init=False, repr=False, compare=False)

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, raw: Any, fields: Any) -> Any:
        # The rules across sections run on the raw values whether or not the fields pass:
        # pydantic would skip an after-validator, and the spec reports every problem at once.
        if not isinstance(raw, dict):
            return fields(raw)
        raw = _with_section_defaults(raw)
        found = _rules(raw)
        try:
            spec = fields(raw)
        except ValidationError as e:
            raise invalid(again(e.errors()) + found) from None
        if found:
            raise invalid(found)
        return spec

    @property
    def model_name(self) -> str:
        return self.promotion.model_name or self.name

    def training_max_epochs(self) -> int:
        """The largest epoch budget any trial can have (max_epochs may itself be a space)."""
        return max(_int_candidates(self.training, "max_epochs"), default=1)

    def training_seed(self) -> int:
        return min(_int_candidates(self.training, "seed"), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in TOP_KEYS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def spec_hash(self) -> str:
        """A short, stable hash of the whole spec: what the registry's model card records."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def with_tracking_uri(self, uri: str) -> ExperimentSpec:
        new = copy.deepcopy(self)
        new.tracking.uri = uri
        return new


TOP_KEYS = {"name", "task", "model", "optimizer", "training", "recipe", *SETTING_SECTIONS}


def _int_candidates(section: Any, key: str) -> list[int]:
    """Integer candidates of ``section[key]`` across section branches and leaf spaces."""
    return [
        int(c)
        for branch in _values(section)
        for c in _values(branch.get(key) if isinstance(branch, dict) else None)
        if is_number(c)
    ]


def _with_section_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill the searchable sections' defaults (into each branch of a choice of sections); a
    section left out or null takes its defaults."""
    out = {k: v for k, v in raw.items() if v is not None or k in ("name", "task", "optimizer")}
    out.setdefault("name", None)  # reported as required, with the rule
    out["model"] = _with_defaults(raw.get("model"), MODEL_DEFAULTS, {"arch": "mlp"})
    out["training"] = _with_defaults(raw.get("training"), TRAINING_DEFAULTS)
    out["recipe"] = raw.get("recipe") or []
    return out


def _with_defaults(value: Any, defaults: dict[str, Any], given: dict[str, Any] | None = None) -> Any:
    """``defaults`` is the whole section when none is given; ``given`` (default: ``defaults``)
    is what fills a section the spec gives."""
    given = defaults if given is None else given
    if value is None:
        return dict(defaults)
    if is_space(value) and isinstance(value[space_kind(value)], list):
        kind = space_kind(value)
        return {kind: [_with_defaults(v, defaults, given) if isinstance(v, dict) else v for v in value[kind]]}
    return {**given, **value} if isinstance(value, dict) else value


# --------------------------------------------------------------------------- rules across fields


def _rules(raw: dict[str, Any]) -> list[InitErrorDetails]:
    """The rules that read several fields, on the raw values: each compares values, so one of
    the wrong type is simply reported by its own field."""
    s, r = _given("search", raw), _given("resources", raw)
    searcher, found = s["searcher"], []

    def say(path: str, value: Any, why: str) -> None:
        found.append(problem(value, why, path=path))

    kinds = set(_space_kinds(raw))
    if searcher in MODEL_BASED and "grid" in kinds:
        say("search.searcher", searcher, f"{searcher} cannot run grid spaces; use choice, or set search.searcher: random")  # noqa: E501
    if searcher == "grid" and kinds & set(RANGES):
        say("search.searcher", searcher, "grid can only enumerate choice and grid spaces; this spec has ranges (uniform/loguniform/randint)")  # noqa: E501
    if isinstance(s["warm_start"], dict) and searcher not in MODEL_BASED:
        say("search.warm_start", s["warm_start"], f"searcher {searcher!r} does not learn from earlier trials; use one of: " + ", ".join(MODEL_BASED))  # noqa: E501
    objectives = _given("promotion", raw)["objectives"]
    if searcher in MULTI_OBJECTIVE and isinstance(objectives, list) and len(objectives) < 2:
        say("search.searcher", searcher, "searches the Pareto front of promotion.objectives and needs two or more of them; with one objective use searcher: optuna")  # noqa: E501
    if s["scheduler"] == "pbt" and searcher != "random":
        say("search.scheduler", "pbt", "pbt mutates trials itself; use searcher: random")
    amounts = (r["cpu"], r["gpu"], r["tpu"])  # gpu: auto is always some GPU
    if all(is_number(v) for v in amounts) and sum(amounts) == 0:
        say("resources.cpu", r["cpu"], "a trial needs at least some cpu, gpu or tpu")
    training = raw["training"] if isinstance(raw["training"], dict) else {}
    patience, metric = training.get("patience"), s["metric"]
    used = any(v is not None for v in _values(patience))
    if used and isinstance(metric, str) and not metric.startswith("val_"):
        say("training.patience", patience, f"judges search.metric each epoch; {metric!r} is not a per-epoch val_ metric")  # noqa: E501
    return found


def _given(section: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A settings section as given, over its defaults (a malformed one: the defaults)."""
    value = raw.get(section)
    return {**asdict(SETTING_SECTIONS[section]()), **(value if isinstance(value, dict) else {})}


def _space_kinds(raw: dict[str, Any]) -> Iterator[str]:
    def walk(v: Any) -> Iterator[str]:
        if is_space(v):
            yield space_kind(v)
            for c in space_candidates(v):
                yield from walk(c)
        elif isinstance(v, dict | list):
            for x in v.values() if isinstance(v, dict) else v:
                yield from walk(x)

    for section in ("task", "model", "optimizer", "training", "recipe"):
        yield from walk(raw.get(section))
