"""The experiment spec as a JSON Schema, for editors: ``podium schema > podium.schema.json``.

The YAML language server (VS Code's YAML extension, and others) validates and completes a spec
as it is typed once the file names the schema on its first line::

    # yaml-language-server: $schema=./podium.schema.json

The schema is built from the spec's own declarations (``orchestrator.spec``: its dataclasses'
fields, types and docs; the registries of schedulers, searchers, tasks, models, optimizers and
recipe steps), so it cannot drift from what ``podium validate`` accepts. It checks the shape —
sections, keys, types, names, the five kinds of search space — while the checks that need the
plug-ins, the task or several fields at once stay with ``podium validate``.

Example:
    >>> schema = spec_schema()
    >>> sorted(schema["properties"]["search"]["properties"]["scheduler"]["enum"])
    ['asha', 'fifo', 'hyperband', 'median', 'pbt']
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

PLUGIN_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"  # module:function
SPACE_KINDS = {
    "choice": {"type": "array", "minItems": 1, "description": "sampled from these values"},
    "grid": {"type": "array", "minItems": 1, "description": "every value, once per sample"},
    "uniform": {"$ref": "#/$defs/bounds", "description": "uniform in [low, high]"},
    "loguniform": {"$ref": "#/$defs/bounds", "description": "log-uniform in [low, high], low > 0"},
    "randint": {"$ref": "#/$defs/bounds", "description": "an integer in [low, high], inclusive"},
}


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a Podium experiment spec."""
    from orchestrator import spec as s
    from workers.models import MODELS
    from workers.optimizers import OPTIMIZERS
    from workers.recipes import STEPS
    from workers.tasks import TASKS

    docs = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(s.ExperimentSpec)}
    props: dict[str, Any] = {
        "name": {"type": "string", "pattern": s.NAME_RE.pattern, "description": docs["name"]},
        "task": _or_space(_name_or_plugin(TASKS.names()), docs["task"]),
        "model": _section(
            {"arch": _or_space(_name_or_plugin(MODELS.names()))}, docs["model"], open_keys=True
        ),
        "optimizer": _section(
            {"name": _or_space({"enum": OPTIMIZERS.names()})}, docs["optimizer"], open_keys=True
        ),
        "training": _section(
            {
                # Sub-sections (a schedule, an attack) are mappings of their own.
                k: {} if k in ("lr_schedule", "adversarial") else {"$ref": "#/$defs/value"}
                for k in s.TRAINING_DEFAULTS
            },
            docs["training"],
        ),
        "recipe": _recipe(STEPS.names(), docs["recipe"]),
    }
    for name, cls in s.SETTING_SECTIONS.items():
        props[name] = _settings(cls, docs[name])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Podium experiment spec",
        "description": "One experiment: what to search, how to run it, what to promote.",
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": props,
        "$defs": _defs(),
    }


def _defs() -> dict[str, Any]:
    return {
        "bounds": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "space": {
            "description": "a search space: one key, choice, grid, uniform, loguniform or randint",
            "oneOf": [
                {
                    "type": "object",
                    "properties": {kind: schema},
                    "required": [kind],
                    "additionalProperties": False,
                }
                for kind, schema in SPACE_KINDS.items()
            ],
        },
        # A setting in a searchable section: a plain value or a search space (a mapping is
        # read as a space, so a misspelt kind such as {uniformm: ...} is caught here).
        "value": {
            "anyOf": [
                {"$ref": "#/$defs/space"},
                {"type": ["string", "number", "boolean", "null", "array"]},
            ]
        },
    }


def _or_space(schema: dict[str, Any], doc: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"anyOf": [schema, {"$ref": "#/$defs/space"}]}
    if doc:
        out["description"] = doc
    return out


def _name_or_plugin(names: list[str]) -> dict[str, Any]:
    return {"anyOf": [{"enum": names}, {"type": "string", "pattern": PLUGIN_PATTERN}]}


def _section(known: dict[str, Any], doc: str, open_keys: bool = False) -> dict[str, Any]:
    """A searchable section: a mapping, or a choice/grid of mappings (a conditional space)."""
    mapping = {
        "type": "object",
        "properties": known,
        # A model or optimizer takes the keys its builder declares: checked by podium validate.
        "additionalProperties": {"$ref": "#/$defs/value"} if open_keys else False,
    }
    branches = {"type": "array", "minItems": 1, "items": mapping}
    choice = {
        "type": "object",
        "properties": {"choice": branches, "grid": branches},
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    }
    return {"description": doc, "anyOf": [choice, mapping]}


def _recipe(steps: list[str], doc: str) -> dict[str, Any]:
    step = {
        "type": "object",
        "required": ["step"],
        "properties": {"step": {"enum": steps}},
        "additionalProperties": {"$ref": "#/$defs/value"},
    }
    lists = {"type": "array", "items": step}
    spaces = {
        "type": "object",
        "properties": {"choice": {"type": "array", "items": lists}},
        "required": ["choice"],
        "additionalProperties": False,
    }
    return {"description": doc, "anyOf": [lists, spaces]}


def _settings(cls: type, doc: str) -> dict[str, Any]:
    """A plain settings section (search, resources, ...) from its dataclass."""
    from orchestrator import spec as s

    hints = typing.get_type_hints(cls)
    enums = {
        "scheduler": s.SCHEDULERS,
        "searcher": s.SEARCHERS,
        "mode": ("max", "min"),
        "strategy": ("best", "pareto"),
        "pick": ("knee", "weighted"),
        "selection_split": ("validation", "test"),
    }
    props = {}
    for f in dataclasses.fields(cls):
        schema = _json_type(hints[f.name])
        if f.name in enums:
            schema = {"enum": list(enums[f.name])}
        schema["description"] = f.metadata.get("doc", "")
        props[f.name] = schema
    return {
        "type": "object",
        "description": doc,
        "properties": props,
        "additionalProperties": False,
    }


def _json_type(hint: Any) -> dict[str, Any]:
    """The JSON Schema type of a settings field's annotation."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [_json_type(a) for a in args if a is not type(None)]
        schema = kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
        return {"anyOf": [schema, {"type": "null"}]}
    origin = typing.get_origin(hint)
    if origin is list:
        return {"type": "array", "items": _json_type(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]} if hint is not float else {"type": "number"}
    return {}
