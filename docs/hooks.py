"""MkDocs hook: the spec reference page, generated at build time from the spec's JSON Schema
(``orchestrator.spec.schema.spec_schema``, what ``podium schema`` prints), so the page cannot drift
from the validator. Written here because no MkDocs plug-in renders a JSON Schema as a table
without pulling in a documentation generator of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference/spec.md"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files


def render() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from orchestrator.spec.schema import spec_schema

    schema = spec_schema()
    lines = [
        "# Spec reference",
        "",
        "Every section and field of an experiment spec, generated from the JSON Schema the",
        "validator publishes (`podium schema`). Any value of `model`, `optimizer`, `training` and",
        "`recipe` may be a search space (`{choice: [...]}`, `{grid: [...]}`, `{uniform: [a, b]}`,",
        "`{loguniform: [a, b]}`, `{randint: [a, b]}`). `podium validate SPEC` prints a spec with",
        "every default filled in.",
        "",
    ]
    for name, section in schema["properties"].items():
        lines += [f"## `{name}`", "", str(section.get("description", "")), ""]
        fields = section.get("properties") or _mapping_fields(section)
        if fields:
            lines += ["| field | type | description |", "|---|---|---|"]
            for key, field in fields.items():
                text = str(field.get("description", "")).replace("|", "\\|")
                lines.append(f"| `{key}` | {_type(field)} | {text} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _mapping_fields(section: dict[str, Any]) -> dict[str, Any]:
    for option in section.get("anyOf", []):
        if option.get("type") == "object" and option.get("properties"):
            return dict(option["properties"])
    return {}


def _type(field: dict[str, Any]) -> str:
    if "enum" in field:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in field["enum"])
    if "$ref" in field:
        return "value or search space"
    if "anyOf" in field:
        return " or ".join(_type(f) for f in field["anyOf"])
    return str(field.get("type", "mapping"))
