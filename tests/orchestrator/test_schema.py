"""``podium schema``: every example spec validates against it; malformed specs do not."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.spec import DEFAULT_SPEC
from orchestrator.spec.schema import spec_schema

ROOT = Path(__file__).parents[2]
SPECS = sorted((ROOT / "examples").rglob("*.yaml")) + [DEFAULT_SPEC]


@pytest.fixture(scope="module")
def validator():
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_spec_is_valid_under_the_schema(validator, path):
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"search": {}}, "'name' is a required property"),
        ({"name": "x", "bogus": 1}, "'bogus' was unexpected"),
        ({"name": "x", "search": {"scheduler": "ashaa"}}, "'ashaa' is not one of"),
        ({"name": "x", "search": {"num_samples": "8"}}, "'8' is not of type 'integer'"),
        ({"name": "x", "training": {"max_epoch": 3}}, "is not valid under any of the given"),
        ({"name": "x", "model": {"dropout": {"uniformm": [0, 1]}}}, "is not valid under any"),
        ({"name": "x", "recipe": [{"step": "prunee"}]}, "is not valid under any"),
    ],
)
def test_malformed_specs_are_not(validator, spec, says):
    messages = [e.message for e in validator.iter_errors(spec)]
    assert any(says in m for m in messages), messages


def test_podium_schema_prints_it(capsys):
    import json

    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Podium experiment spec"
