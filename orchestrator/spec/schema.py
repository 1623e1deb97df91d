"""The experiment spec as a JSON Schema, for editors: ``podium schema > podium.schema.json``.

The YAML language server (VS Code's YAML extension, and others) validates and completes a spec
as it is typed once the file names the schema on its first line::

    # yaml-language-server: $schema=./podium.schema.json

The schema is pydantic's, of the spec's own models (:mod:`orchestrator.spec.models`: their
fields, types, descriptions and the registries' names), so it cannot drift from what
``podium validate`` accepts. It checks the shape — sections, keys, types, names, the five kinds
of search space — while the checks that need the plug-ins, the task or several fields at once
stay with ``podium validate``.

Example:
    >>> schema = spec_schema()
    >>> sorted(schema["$defs"]["SearchSpec"]["properties"]["scheduler"]["enum"])
    ['asha', 'fifo', 'hyperband', 'median', 'pbt']
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from orchestrator.spec.models import ExperimentSpec


class _Schema(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "Num Samples" above num_samples tells an editor's user nothing new


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a Podium experiment spec."""
    schema = TypeAdapter(ExperimentSpec).json_schema(schema_generator=_Schema)
    return {
        "$schema": _Schema.schema_dialect,
        **schema,
        "title": "Podium experiment spec",
        "description": "One experiment: what to search, how to run it, what to promote.",
    }
