"""MkDocs hook: the spec reference page, generated at build time from the spec's JSON Schema
(``orchestrator.spec.schema.spec_schema``: pydantic's schema of the spec's models, what
``podium schema`` prints), so the page cannot drift from the validator. Written here because no
MkDocs plug-in renders a JSON Schema as a table without pulling in a documentation generator of
its own."""

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
    defs = schema["$defs"]
    lines = [
        "# Spec reference",
        "",
        "Every section and field of an experiment spec, generated from the JSON Schema the",
        "validator publishes (`podium schema`, pydantic's schema of the spec's models). Any",
        "value of `model`, `optimizer`, `training` and `recipe` may be a search space",
        "(`{choice: [...]}`, `{grid: [...]}`, `{uniform: [a, b]}`, `{loguniform: [a, b]}`,",
        "`{randint: [a, b]}`), and the whole section a choice of sections. `podium validate SPEC`",
        "prints a spec with every default filled in.",
        "",
    ]
    for name, section in schema["properties"].items():
        lines += [f"## `{name}`", "", str(section.get("description", "")), ""]
        fields = _fields(section, defs)
        if fields:
            lines += ["| field | type | default | description |", "|---|---|---|---|"]
            for key, field in fields.items():
                text = " ".join(str(field.get("description", "")).split()).replace("|", "\\|")
                default = f"`{json.dumps(field['default'])}`" if "default" in field else ""
                lines.append(f"| `{key}` | {_type(field)} | {default} | {text} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _fields(section: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A section's fields: its model's (a settings section, or the keys of a searchable one)."""
    for option in [section, *section.get("anyOf", [])]:
        ref = option.get("$ref") or option.get("items", {}).get("$ref")
        if ref:
            return dict(defs[ref.rsplit("/", 1)[-1]].get("properties", {}))
    return {}


def _type(field: dict[str, Any]) -> str:
    if "enum" in field:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in field["enum"])
    if "const" in field:
        return f"`{json.dumps(field['const'])}`"
    if field.get("$ref", "").endswith("/SearchSpace"):
        return "search space"
    if "$ref" in field:
        return "mapping"
    if "anyOf" in field:
        return " or ".join(dict.fromkeys(_type(f) for f in field["anyOf"]))
    if field.get("type") == "array" and "items" in field:
        return f"list of {_type(field['items'])}"
    return str(field.get("type", "any"))
