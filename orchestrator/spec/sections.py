"""The searchable sections' keys: ``model``, ``optimizer``, ``training`` and ``recipe``.

Any value may be a search space (:data:`~orchestrator.spec.spaces.Searchable`) and the whole
section a choice of sections; they stay plain dicts in the typed spec (their keys depend on the
chosen arch or optimizer), and these models check them and document their keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.spec.checks import (
    Bool,
    Fraction,
    Identifier,
    Integer,
    Mapping,
    NonNegative,
    OneOf,
    Plain,
    Positive,
    PositiveInt,
    Says,
    Widths,
)
from orchestrator.spec.spaces import (
    Searchable,
    invalid,
    is_space,
    problem,
    space_candidates,
    space_problem,
)
from workers.models import MODELS
from workers.optimizers import OPTIMIZERS, check_hparams
from workers.optimizers.schedules import check_schedule
from workers.recipes import STEPS, check_qat_order, check_recipe
from workers.registry import is_plugin_ref
from workers.trial.adversarial import check_adversarial


def _plugins_only(data: dict[str, Any]) -> bool:
    """Whether every arch a model section can have is a plug-in (a valid arch; else False)."""
    arch = data.get("arch")
    archs = space_candidates(arch) if is_space(arch) else [arch]
    return bool(archs) and all(is_plugin_ref(a) for a in archs)


class ModelKeys(BaseModel):
    """The model: ``arch`` and the settings its builder's signature takes (a plug-in's own are
    checked against its signature once it is imported)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    __pydantic_extra__: dict[str, Searchable[Plain]]  # type: ignore[assignment]

    arch: Searchable[Annotated[str, OneOf(MODELS.names(), plugins=True)]] = "mlp"
    """mlp, cnn, a text model, or module:function (a builder of input_shape, num_classes)"""
    hidden: Searchable[Widths] = [128, 64]
    """hidden layer widths (mlp, cnn)"""
    channels: Searchable[Widths] | None = None
    """convolution channels (cnn)"""
    batch_norm: Searchable[Bool] = False
    """batch norm after each hidden layer"""
    dropout: Searchable[Fraction] = 0.0
    """dropout after each hidden layer"""
    output: Searchable[Identifier] | None = None
    """which output of a plug-in model holds the logits (keys.MODEL_OUTPUT)"""

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

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    __pydantic_extra__: dict[str, Searchable[Plain]]  # type: ignore[assignment]

    name: Searchable[Annotated[Any, OneOf(OPTIMIZERS.names())]] = Field(None, validate_default=True)
    """the optimizer (workers/optimizers)"""

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

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_epochs: Searchable[PositiveInt] = 10
    """epochs per trial (its budget)"""
    batch_size: Searchable[PositiveInt | None] = None
    """None: the task's own"""
    seed: Searchable[Integer] = 0
    """seed of the data split and the model's weights"""
    l1_penalty: Searchable[NonNegative] = 0.0
    """L1 weight penalty per update"""
    lr_schedule: Annotated[Mapping, _checked_by(check_schedule)] | None = None
    """{name: none | step | cosine | onecycle, ...}: the learning rate per epoch"""
    adversarial: Annotated[Mapping, _checked_by(check_adversarial)] | None = None
    """{attack: fgsm | pgd, epsilon, ...}: train on attacked inputs too"""
    checkpoint_every: Searchable[PositiveInt] = 1
    """epochs between checkpoints"""
    grad_clip: Searchable[Positive | None] = None
    """max total L2 norm of the gradients before each update; None: off"""
    accumulate: Searchable[PositiveInt] = 1
    """batches whose gradients make one update"""
    label_smoothing: Searchable[Fraction] = 0.0
    """classification: cross-entropy against smoothed targets"""
    patience: Searchable[PositiveInt | None] = None
    """end a trial after this many epochs without a better search.metric"""
    keep: Searchable[
        Annotated[Literal["best", "last"], Says("must be 'best' or 'last', got {v}")]
    ] = "best"
    """best: the epoch with the best search.metric (a val_ metric) is tested, registered and
    reported as the trial's; last: the last epoch trained"""
    # Used only where Ray gives the trial a GPU (workers/device.py).
    amp: Searchable[Bool] = False
    """bf16 autocast of the forward pass (GPU only)"""
    cudnn_benchmark: Searchable[Bool] = False
    """cuDNN autotuning (GPU only)"""


class RecipeStep(BaseModel):
    """One compression step: ``step`` and that step's own settings (workers/recipes)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
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
