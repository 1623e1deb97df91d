"""The experiment spec: YAML in, a typed and validated :class:`ExperimentSpec` out.

Any searchable value may be a search space, written as a one-key mapping::

    lr: {loguniform: [0.0001, 0.1]}        # also uniform, randint (inclusive bounds)
    dropout: {choice: [0.0, 0.2, 0.5]}     # sampled
    hidden: {grid: [[64], [128, 64]]}      # every value, once per sample
    optimizer:                             # a choice of whole sections makes its keys
      choice:                              # conditional: momentum only where sgd is chosen
        - {name: momentum, lr: 0.05, momentum: {uniform: [0.5, 0.99]}}
        - {name: adam, lr: 0.001}

The sections are pydantic models (:mod:`orchestrator.spec.models`). Validation reports every
problem at once, each with its dotted path, its bad value and what is valid, before anything
starts (no Ray, no MLflow). Example:

    >>> spec = parse_spec({"name": "demo", "search": {"num_samples": 2}})
    >>> spec.search.num_samples, spec.model["arch"]
    (2, 'mlp')
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.models import (
    MODEL_DEFAULTS,
    SETTING_SECTIONS,
    TOP_KEYS,
    TRAINING_DEFAULTS,
    ExperimentSpec,
)
from orchestrator.spec.overrides import STORAGE_VARIABLE, apply_overrides, storage_from_environment
from orchestrator.spec.plugins import import_roots
from orchestrator.spec.settings import (
    AUTO_GPU,
    MODEL_BASED,
    MULTI_OBJECTIVE,
    NAME_RE,
    SCHEDULERS,
    SEARCHERS,
    WarmStart,
)
from orchestrator.spec.spaces import SPACE_KINDS, is_space, space_candidates, space_kind
from orchestrator.spec.task import check_with_task

__all__ = [
    "AUTO_GPU",
    "DEFAULT_SPEC",
    "MODEL_BASED",
    "MODEL_DEFAULTS",
    "MULTI_OBJECTIVE",
    "NAME_RE",
    "SCHEDULERS",
    "SEARCHERS",
    "SPACE_KINDS",
    "ExperimentSpec",
    "Problem",
    "SpecError",
    "apply_overrides",
    "is_space",
    "load_spec",
    "parse_spec",
    "space_candidates",
    "space_kind",
]

DEFAULT_SPEC = Path(__file__).parent.parent / "defaults" / "digits.yaml"
_SPEC = TypeAdapter(ExperimentSpec)


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Read a YAML spec (the built-in default when ``path`` is None), apply ``--set`` overrides,
    validate, and return the typed spec.

    Raises:
        SpecError: unreadable YAML, a bad override, or any invalid value (all problems at once).
    """
    path = Path(path) if path else DEFAULT_SPEC
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(
            [Problem("", str(path), f"cannot read spec file {str(path)!r}: {e.strerror}")]
        ) from e
    except yaml.YAMLError as e:
        raise SpecError([Problem("", str(path), f"{path} is not valid YAML: {e}")]) from e
    if not isinstance(raw, dict):
        raise SpecError(
            [Problem("", raw, f"{path} must hold a mapping of sections, got {type(raw).__name__}")]
        )
    apply_overrides(raw, overrides or [])
    from_environment = storage_from_environment(raw)
    try:
        return parse_spec(raw, spec_dir=path.parent)
    except SpecError as e:
        if not from_environment:
            raise
        # Say where a bad value came from: the spec file does not show it.
        raise SpecError(
            [
                Problem(p.path, p.value, f"{p.message} (from ${STORAGE_VARIABLE})")
                if p.path == "cluster.storage_path"
                else p
                for p in e.problems
            ]
        ) from None


def parse_spec(raw: dict[str, Any], spec_dir: str | Path | None = None) -> ExperimentSpec:
    """Validate a spec mapping (already YAML-loaded) and return the typed spec.

    Once the spec is valid on its own, its plug-ins (``module:function``) are imported from
    ``spec_dir`` (the spec file's folder), then the working directory
    (:mod:`orchestrator.spec.plugins`), and its task is loaded once, so its metrics can be
    checked and the defaults that depend on its kind filled in (:mod:`orchestrator.spec.task`).

    Raises:
        SpecError: with every problem found.
    """
    try:
        spec = _SPEC.validate_python(raw)
    except ValidationError as e:
        raise SpecError(problems_of(e)) from None
    spec.plugin_roots = tuple(import_roots(spec_dir))
    if problems := check_with_task(spec, raw):
        raise SpecError(problems)
    spec.warnings = tuple(_warnings(spec))
    return spec


def _warnings(spec: ExperimentSpec) -> list[str]:
    out = []
    tested = [o["metric"] for o in spec.promotion.objectives if o["metric"].startswith("test_")]
    if spec.promotion.selection_split == "test" and tested:
        out.append(
            f"promotion.selection_split: 'test' chooses the sweep's winner by {tested[0]}: the "
            "test split takes part in the choice, so the winner's test score is optimistic; "
            "the default, validation, chooses by the val_ twin and keeps test for comparing "
            "champion and challenger"
        )
    return out


# --------------------------------------------------------------------------- pydantic's errors

# The keys of each mapping that has a fixed set, by its path (branch indices left out).
KNOWN_KEYS: dict[str, set[str]] = {
    "": TOP_KEYS,
    **{name: {f.name for f in fields(cls) if f.init} for name, cls in SETTING_SECTIONS.items()},
    "training": set(TRAINING_DEFAULTS),
    "search.warm_start": set(WarmStart.__annotations__),
}


def problems_of(error: ValidationError) -> list[Problem]:
    """Pydantic's errors as the spec's problems: a dotted path (``model[1].dropout``), the bad
    value and the message; an unknown key lists the valid ones. Each problem once."""
    out: dict[tuple[str, str, str], Problem] = {}
    for e in error.errors():
        path = (e.get("ctx") or {}).get("path") or _dotted(e["loc"])
        value, message = e["input"], e["msg"]
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = _unknown(path)
        elif e["type"] == "missing":
            value, message = None, "required"
        out.setdefault((path, repr(value), message), Problem(path, value, message))
    return list(out.values())


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out += part if part.startswith("[") else f".{part}"
    return out.lstrip(".")


def _unknown(path: str) -> str:
    parent, _, key = path.rpartition(".")
    valid = sorted(KNOWN_KEYS.get(re.sub(r"\[\d+\]", "", parent), ()))
    word = "section" if not parent else "setting" if parent in SETTING_SECTIONS else "key"
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {word} {key!r}; valid: {', '.join(valid)}{hint}"
