"""The recipe-step interface, its registry, and the state a recipe carries from step to step.

A step is a :class:`StepEntry`: typed parameters (checked before anything starts) and an
``apply(state, params, ctx)`` that changes the :class:`RecipeState` in place. Torch steps
(``prune``, ``distill``) replace ``state.model``; ``quantize`` and ``export`` only change how the
state is exported, so every step can be measured the same way: export the state, then time it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from workers.optimizers._base import HParam
from workers.registry import Registry

Problems = list[tuple[str, Any, str]]


@dataclass
class RecipeContext:
    """What a recipe needs from the trial besides the model and the data.

    Attributes:
        workdir: a folder the recipe may write into; the final artifacts are placed here.
        model_section: the trial's resolved spec ``model`` section (arch, hidden, channels...), so
            a step can rebuild a smaller model of the same family.
        seed: seeds fine-tuning and student initialisation.
        teachers: ``models:/name@alias`` → local teacher file, resolved by the driver before trials
            start (workers never talk to MLflow; see ``tracking.teachers.fetch_teacher``).
        threads: intra-op threads for every latency/throughput measurement (1: reproducible).
        latency_iters: timed batch-1 runs per measurement (after a warm-up).
        device: where fine-tuning and distillation run (measurement is always CPU).
        plugins: the ``module:function`` references the sweep's own spec names: the only code a
            registry teacher's metadata may name (``workers.models.check_model_metadata``).
    """

    workdir: Path
    model_section: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    teachers: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    latency_iters: int = 300
    device: str = "cpu"
    plugins: tuple[str, ...] = ()

    @classmethod
    def coerce(
        cls, ctx: RecipeContext | dict[str, Any] | None, workdir: Path | None = None
    ) -> RecipeContext:
        """Accept a context, a plain mapping of its fields (what travels through Ray), or None."""
        if isinstance(ctx, RecipeContext):
            return ctx
        values = dict(ctx or {})
        if "workdir" not in values:
            if workdir is None:
                raise ValueError("a recipe context needs 'workdir': the folder for artifacts")
            values["workdir"] = workdir
        values["workdir"] = Path(values["workdir"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class RecipeState:
    """The model as the recipe has made it so far.

    Attributes:
        model: the current fp32 torch model (pruned or distilled steps replace it).
        section: the spec ``model`` section that rebuilds ``model``'s architecture.
        quantize: the quantize step's settings once one ran (applied at every later export).
        formats: export formats asked for besides ONNX (``torchscript``).
    """

    model: nn.Module
    section: dict[str, Any]
    quantize: dict[str, Any] | None = None
    formats: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class StepEntry:
    """A registered recipe step.

    Attributes:
        name: the spec's ``step`` value.
        doc: one line for ``podium`` help and errors.
        params: the step's parameters with defaults, types and ranges.
        apply: ``apply(state, params, data, ctx)`` changes ``state`` in place; ``params`` has every
            default filled in.
        check: cross-field or non-range checks returning ``(key, value, message)`` problems.
    """

    name: str
    doc: str
    params: dict[str, HParam]
    apply: Callable[..., None]
    check: Callable[[dict[str, Any]], Problems] | None = None


STEPS: Registry[StepEntry] = Registry("recipe.step")


def check_step(step: dict[str, Any]) -> Problems:
    """Problems in one concrete step mapping, keys relative to the step."""
    name = step.get("step")
    if not isinstance(name, str) or name not in STEPS:
        return [("step", name, f"{name!r} is not one of: {', '.join(STEPS.names())}")]
    entry = STEPS.get(name)
    problems: Problems = []
    for key, value in step.items():
        if key == "step":
            continue
        if key not in entry.params:
            valid = ", ".join(sorted(entry.params))
            problems.append(
                (key, value, f"step {name!r} takes no parameter {key!r}; it takes: {valid}")
            )
            continue
        msg = entry.params[key].check(value)
        if msg:
            problems.append((key, value, msg))
    if not problems and entry.check:
        problems += entry.check(full_params(entry, step))
    return problems


def full_params(entry: StepEntry, step: dict[str, Any]) -> dict[str, Any]:
    """The step's parameters with defaults filled in (``step`` itself dropped)."""
    out = {k: h.default for k, h in entry.params.items()}
    out.update({k: v for k, v in step.items() if k != "step"})
    return out


def step_label(index: int, name: str) -> str:
    """The per-step metric prefix component, e.g. ``1_quantize`` (0-based, as in ``recipe[1]``)."""
    return f"{index}_{name}"


@dataclass(frozen=True)
class IntListParam(HParam):
    """A list of positive integers (layer widths), or None for "keep the trial's own"."""

    kind: type = list

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        ok = (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        )
        return None if ok else f"must be a non-empty list of positive integers, got {value!r}"


@dataclass(frozen=True)
class StrParam(HParam):
    """Any string (``HParam`` of kind str accepts non-strings when it has no choices)."""

    kind: type = str

    def check(self, value: Any) -> str | None:
        if value is None and self.default is None:
            return None
        if self.choices:
            return super().check(value)
        return (
            None
            if isinstance(value, str) and value
            else f"must be a non-empty string, got {value!r}"
        )
