"""The experiment spec as a pydantic model: :class:`ExperimentSpec`, its sections' defaults, and
the rules that read several sections at once.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, field
from typing import Annotated, Any

import yaml
from pydantic import (
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails

from orchestrator.spec.checks import OneOf, Says, Section
from orchestrator.spec.sections import ModelKeys, OptimizerKeys, Steps, TrainingKeys, _values
from orchestrator.spec.settings import (
    MODEL_BASED,
    MULTI_OBJECTIVE,
    NAME_RE,
    ClusterSpec,
    PromotionSpec,
    ResourcesSpec,
    SearchSpec,
    TrackingSpec,
)
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
)
from workers.tasks import TASKS

# --------------------------------------------------------------------------- the spec

MODEL_DEFAULTS: dict[str, Any] = {
    k: f.default for k, f in ModelKeys.model_fields.items() if f.default is not None
}
TRAINING_DEFAULTS: dict[str, Any] = {k: f.default for k, f in TrainingKeys.model_fields.items()}
DEFAULTS = {
    "model": MODEL_DEFAULTS,
    "optimizer": {"name": "adam", "lr": 0.001},
    "training": TRAINING_DEFAULTS,
}
SETTING_SECTIONS: dict[str, Any] = {
    "search": SearchSpec,
    "resources": ResourcesSpec,
    "tracking": TrackingSpec,
    "cluster": ClusterSpec,
    "promotion": PromotionSpec,
}


MAPPING = "must be a mapping of settings, got {v}"


def _defaults(section: str) -> Callable[[], dict[str, Any]]:
    return lambda: dict(DEFAULTS[section])


@dataclass(config=ConfigDict(extra="forbid", use_attribute_docstrings=True))
class ExperimentSpec:
    """One experiment. ``model``, ``optimizer``, ``training`` and ``recipe`` may hold search spaces;
    the other sections are plain settings."""

    name: Annotated[
        StrictStr, StringConstraints(pattern=NAME_RE.pattern),
        Says("required: letters, digits, '_', '.', '-' (at most 100), got {v}"),
    ]  # fmt: skip
    """experiment name: MLflow experiment and default registered-model name"""
    task: Searchable[Annotated[Any, OneOf(TASKS.names(), plugins=True)]] = "digits"
    """data set: digits, fashion-mnist, breast_cancer, wine, diabetes, rotten-tomatoes, or
    module:function (a function of the split seed returning workers.tasks.TaskData)"""
    model: Annotated[dict[str, Any], Section(ModelKeys)] = Field(default_factory=_defaults("model"))
    """arch (mlp, cnn, a text model, module:function) and the settings its builder's signature
    takes (mlp: hidden, batch_norm, dropout; cnn: also channels)"""
    optimizer: Annotated[Any, Section(OptimizerKeys)] = Field(
        default_factory=_defaults("optimizer")
    )
    """name, lr and the optimizer's own hyperparameters"""
    training: Annotated[dict[str, Any], Section(TrainingKeys)] = Field(
        default_factory=_defaults("training")
    )
    """max_epochs, batch_size, seed, l1_penalty, lr_schedule, adversarial, grad_clip, accumulate,
    label_smoothing, patience, keep (best | last: the epoch that ships)"""
    recipe: Annotated[Any, Section(Steps, list)] = Field(default_factory=list)
    """compression steps applied after training, in order"""
    search: Annotated[SearchSpec, Says(MAPPING)] = Field(default_factory=SearchSpec)
    """trial proposal and scheduling"""
    resources: Annotated[ResourcesSpec, Says(MAPPING)] = Field(default_factory=ResourcesSpec)
    """per-trial resources"""
    tracking: Annotated[TrackingSpec, Says(MAPPING)] = Field(default_factory=TrackingSpec)
    """MLflow location"""
    cluster: Annotated[ClusterSpec, Says(MAPPING)] = Field(default_factory=ClusterSpec)
    """Ray cluster"""
    promotion: Annotated[PromotionSpec, Says(MAPPING)] = Field(default_factory=PromotionSpec)
    """model selection and registry"""
    # Where plug-ins are imported from, first wins (the spec file's folder, then the working
    # directory): set by parse_spec; not a setting, so never dumped nor read from a spec file.
    plugin_roots: SkipJsonSchema[tuple[str, ...]] = field(
        default=(), init=False, repr=False, compare=False
    )
    # What is allowed but probably not meant, as "path: why" lines (the CLI prints them).
    warnings: SkipJsonSchema[tuple[str, ...]] = field(
        default=(), init=False, repr=False, compare=False
    )

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


def _with_defaults(
    value: Any, defaults: dict[str, Any], given: dict[str, Any] | None = None
) -> Any:
    """``defaults`` is the whole section when none is given; ``given`` (default: ``defaults``)
    is what fills a section the spec gives."""
    given = defaults if given is None else given
    if value is None:
        return dict(defaults)
    if is_space(value) and isinstance(value[space_kind(value)], list):
        kind = space_kind(value)
        return {
            kind: [
                _with_defaults(v, defaults, given) if isinstance(v, dict) else v
                for v in value[kind]
            ]
        }
    return {**given, **value} if isinstance(value, dict) else value


# --------------------------------------------------------------------------- rules across fields


def _rules(raw: dict[str, Any]) -> list[InitErrorDetails]:
    """The rules that read several fields, on the raw values: each compares values, so one of
    the wrong type is simply reported by its own field."""
    s, r = _given("search", raw), _given("resources", raw)
    searcher, kinds, warm = s["searcher"], set(_space_kinds(raw)), s["warm_start"]
    objectives = _given("promotion", raw)["objectives"]
    amounts = (r["cpu"], r["gpu"], r["tpu"])  # gpu: auto is always some GPU
    training = raw["training"] if isinstance(raw["training"], dict) else {}
    patience, metric = training.get("patience"), s["metric"]
    # fmt: off
    rules = [
        (searcher in MODEL_BASED and "grid" in kinds, "search.searcher", searcher,
         f"{searcher} cannot run grid spaces; use choice, or set search.searcher: random"),
        (searcher == "grid" and bool(kinds & set(RANGES)), "search.searcher", searcher,
         "grid can only enumerate choice and grid spaces; this spec has ranges "
         "(uniform/loguniform/randint)"),
        (isinstance(warm, dict) and searcher not in MODEL_BASED, "search.warm_start", warm,
         f"searcher {searcher!r} does not learn from earlier trials; use one of: "
         + ", ".join(MODEL_BASED)),
        (searcher in MULTI_OBJECTIVE and isinstance(objectives, list) and len(objectives) < 2,
         "search.searcher", searcher, "searches the Pareto front of promotion.objectives and "
         "needs two or more of them; with one objective use searcher: optuna"),
        (s["scheduler"] == "pbt" and searcher != "random", "search.scheduler", "pbt",
         "pbt mutates trials itself; use searcher: random"),
        (all(is_number(v) for v in amounts) and sum(amounts) == 0, "resources.cpu", r["cpu"],
         "a trial needs at least some cpu, gpu or tpu"),
        (any(v is not None for v in _values(patience)) and isinstance(metric, str)
         and not metric.startswith("val_"), "training.patience", patience,
         f"judges search.metric each epoch; {metric!r} is not a per-epoch val_ metric"),
    ]
    # fmt: on
    return [problem(value, why, path=path) for broken, path, value, why in rules if broken]


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
