"""Plug-ins resolved in the driver: import roots, reference checks, a plug-in model's own
settings, the task's metrics and kind defaults (parse_spec, in process; no Ray)."""

from __future__ import annotations

import sys

import pytest

from orchestrator.spec import SpecError, load_spec, parse_spec
from orchestrator.spec.plugins import import_roots, ref_problem

MODELS_PY = """
from torch import nn

def bag(input_shape, num_classes, dim=16, depth=1):
    layers = [nn.Flatten(), nn.Linear(64, dim), nn.ReLU()]
    layers += [nn.Linear(dim, dim), nn.ReLU()] * (depth - 1)
    return nn.Sequential(*layers, nn.Linear(dim, num_classes))

def needs_vocab(input_shape, num_classes, vocab_size, dim=8):
    return nn.Linear(vocab_size, num_classes)

def no_shape(num_classes):
    return nn.Linear(4, num_classes)

NOT_A_FUNCTION = 3
"""


def problems(raw, spec_dir=None):
    with pytest.raises(SpecError) as e:
        parse_spec(raw, spec_dir=spec_dir)
    return {p.path: p.message for p in e.value.problems}


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A team folder with its own model module, and a working directory elsewhere."""
    folder = tmp_path / "team"
    folder.mkdir()
    name = f"team_models_{tmp_path.name.replace('-', '_')}"  # one module name per test
    (folder / f"{name}.py").write_text(MODELS_PY)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield folder, name
    sys.modules.pop(name, None)


def test_the_spec_folder_comes_first_then_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert import_roots(tmp_path / "specs") == [str(tmp_path / "specs"), str(tmp_path)]
    assert import_roots(None) == [str(tmp_path)]


def test_a_plug_in_model_takes_the_settings_its_signature_declares(team):
    folder, name = team
    spec = parse_spec(
        {"name": "p", "model": {"arch": f"{name}:bag", "dim": {"choice": [16, 32]}}},
        spec_dir=folder,
    )
    # The builder's defaults are filled in (validate prints them); mlp's are not.
    assert spec.model == {"arch": f"{name}:bag", "dim": {"choice": [16, 32]}, "depth": 1}


def test_a_plug_in_settings_are_judged_by_its_signature_not_a_built_ins_rules(team):
    """A plug-in's ``hidden: 16`` is its own setting: mlp's rule (a list of widths) is mlp's."""
    folder, name = team
    (folder / f"{name}.py").write_text(
        MODELS_PY + "\ndef wide(input_shape, num_classes, hidden=32, dropout=2):\n"
        "    return bag(input_shape, num_classes, dim=hidden)\n"
    )
    model = {"arch": f"{name}:wide", "hidden": {"grid": [16, 32]}, "dropout": 3}
    spec = parse_spec({"name": "p", "model": model}, spec_dir=folder)
    assert spec.model["hidden"] == {"grid": [16, 32]} and spec.model["dropout"] == 3
    # Where the built-in mlp can be the arch, its rules still hold.
    both = {"arch": {"choice": ["mlp", f"{name}:wide"]}, "hidden": 16}
    found = problems({"name": "p", "model": both}, folder)
    assert found["model.hidden"] == "must be a list of positive integers, got 16"
    assert problems({"name": "p", "model": {"arch": "mlp", "hidden": 16}}) == {
        "model.hidden": "must be a list of positive integers, got 16"
    }


def test_model_output_names_a_plug_ins_logits_and_nothing_else(team):
    folder, name = team
    spec = parse_spec({"name": "p", "model": {"arch": f"{name}:bag", "output": "scores"}}, folder)
    assert spec.model["output"] == "scores"  # not one of the builder's settings, yet allowed
    found = problems({"name": "p", "model": {"arch": f"{name}:bag", "output": "a b"}}, folder)
    assert found["model.output"].startswith("must be the name of an output")
    found = problems({"name": "p", "model": {"arch": "mlp", "output": "scores"}})
    assert "built-in archs return logits" in found["model.output"]


def test_an_unknown_setting_lists_the_ones_the_builder_takes(team):
    folder, name = team
    found = problems({"name": "p", "model": {"arch": f"{name}:bag", "width": 3}}, folder)
    assert found == {
        "model.width": f"unknown key 'width' for arch {name}:bag; valid: arch, depth, dim"
    }
    found = problems({"name": "p", "model": {"arch": "mlp", "dim": 3}})
    assert found["model.dim"].endswith("valid: arch, batch_norm, dropout, hidden")


def test_a_required_setting_the_task_does_not_provide_is_named(team):
    folder, name = team
    found = problems({"name": "p", "model": {"arch": f"{name}:needs_vocab"}}, folder)
    assert "needs 'vocab_size'" in found["model.vocab_size"]


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("missing", "has no attribute 'missing'; it has: NOT_A_FUNCTION, bag"),
        ("NOT_A_FUNCTION", "is a int, not a function"),
        ("no_shape", "cannot be called as def no_shape(input_shape, num_classes, **settings)"),
    ],
)
def test_bad_model_references_are_spec_errors(team, attr, expected):
    folder, name = team
    found = problems({"name": "p", "model": {"arch": f"{name}:{attr}"}}, folder)
    assert expected in found["model.arch"]


def test_a_missing_module_says_where_it_looked(team):
    folder, _ = team
    found = problems({"name": "p", "task": "no_such_team_module:iris"}, folder)
    assert "cannot import module 'no_such_team_module'" in found["task"]
    assert str(folder) in found["task"]


def test_a_task_reference_must_take_the_seed():
    assert "is a str, not a function" in ref_problem("os:sep", "task")
    assert "cannot be called as def getcwd(seed)" in ref_problem("os:getcwd", "task")


def test_metrics_must_be_ones_the_task_reports():
    found = problems({"name": "p", "task": "digits", "search": {"metric": "val_rmse"}})
    assert found["search.metric"].endswith(
        "it reports: train_loss, val_accuracy, val_loss, val_macro_f1"
    )
    found = problems({"name": "p", "promotion": {"constraints": ["latency_ms_p50 <= 1"]}})
    assert "(measured only with a recipe)" in found["promotion.constraints[0]"]
    found = problems(
        {
            "name": "p",
            "task": "diabetes",
            "promotion": {"objectives": [{"metric": "test_accuracy"}]},
        }
    )
    assert (
        "task 'diabetes' (regression) trials do not report 'test_accuracy'"
        in found["promotion.objectives[0].metric"]
    )


def test_a_regression_task_defaults_to_its_own_metrics():
    spec = parse_spec({"name": "p", "task": "diabetes"})
    assert (spec.search.metric, spec.search.mode) == ("val_rmse", "min")
    assert spec.promotion.objectives == [{"metric": "test_rmse", "mode": "min"}]
    # A metric without a mode takes the metric's own.
    spec = parse_spec({"name": "p", "task": "diabetes", "search": {"metric": "val_r2"}})
    assert spec.search.mode == "max"
    # Classification keeps what it had.
    spec = load_spec()
    assert (spec.search.metric, spec.promotion.objectives[0]["metric"]) == (
        "val_accuracy",
        "test_accuracy",
    )


def test_adversaries_need_a_classifier_and_recipes_take_any_task():
    # A recipe measures any kind of task on its own metric (issue 28): a regression's RMSE.
    spec = parse_spec({"name": "p", "task": "diabetes", "recipe": [{"step": "quantize"}]})
    assert spec.recipe == [{"step": "quantize"}]
    found = problems({"name": "p", "task": "diabetes", "training": {"adversarial": {}}})
    assert "task 'diabetes' is regression" in found["training.adversarial"]
    streamed = {"name": "p", "task": "tests.workers.plugin_task:streamed"}
    # A task read through a DataLoader takes a recipe too (issue 28): calibrated and fine-tuned
    # from its training Dataset, measured on its test split.
    assert parse_spec({**streamed, "recipe": [{"step": "quantize"}]}).recipe == [
        {"step": "quantize"}
    ]
