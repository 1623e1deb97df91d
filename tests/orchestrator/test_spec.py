"""The spec: defaults, spaces, overrides, and every problem reported at once with path and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec import DEFAULT_SPEC, apply_overrides, load_spec, parse_spec

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))


def problems_of(raw: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        parse_spec(raw)
    return {p.path: p.message for p in e.value.problems}


def test_default_spec_loads_with_its_spaces():
    spec = load_spec()
    assert spec.name == "digits-default"
    assert spec.optimizer["choice"][0]["name"] == "nag"
    assert spec.search.scheduler == "asha"
    assert spec.model_name == "digits-classifier"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path):
    assert load_spec(path).name


def test_defaults_fill_a_minimal_spec():
    spec = parse_spec({"name": "tiny"})
    assert spec.task == "digits"
    assert spec.model["arch"] == "mlp" and spec.model["dropout"] == 0.0
    assert spec.training["max_epochs"] == 10 and spec.training["batch_size"] is None
    assert spec.promotion.alias == "champion" and spec.model_name == "tiny"
    assert spec.resources.cpu == 1.0


def test_section_choice_gets_defaults_in_each_branch():
    spec = parse_spec(
        {"name": "x", "model": {"choice": [{"arch": "mlp"}, {"arch": "cnn", "channels": [8]}]}}
    )
    branches = spec.model["choice"]
    assert branches[0]["hidden"] == [128, 64] and branches[1]["channels"] == [8]


def test_all_problems_reported_at_once_with_path_and_value():
    found = problems_of(
        {
            "name": "bad name!",
            "task": "mnist",
            "model": {"arch": "transformr", "dropout": 1.5, "hidden": [0]},
            "optimizer": {"name": "adamw", "lr": -1},
            "training": {"max_epochs": 0, "batch_size": "big"},
            "search": {"scheduler": "ashaa", "searcher": "bayes", "metric": "f1", "mode": "up"},
            "resources": {"cpu": -1},
            "bogus": 1,
        }
    )
    assert "'ashaa' is not one of: asha, fifo, hyperband, median, pbt" in found["search.scheduler"]
    for path in (
        "name",
        "task",
        "model.arch",
        "model.dropout",
        "model.hidden",
        "optimizer.name",
        "training.max_epochs",
        "training.batch_size",
        "search.searcher",
        "search.mode",
        "resources.cpu",
        "bogus",
    ):
        assert path in found, path
    assert "'mnist'" in found["task"] and "digits" in found["task"]


@pytest.mark.parametrize("uri", ["s3://bucket/ray", "gs://bucket/ray/", "/shared/ray"])
def test_storage_is_a_folder_or_an_object_store_uri(uri):
    spec = parse_spec({"name": "x", "cluster": {"storage_path": uri}})
    assert spec.cluster.storage_path == uri


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("ftp://host/ray", "scheme 'ftp' is not one of"),
        ("s3:///ray", "names no bucket"),
        ("s3://bucket/ray?endpoint_override=minio:9000", "AWS_ENDPOINT_URL"),
    ],
)
def test_a_storage_uri_podium_cannot_use_is_refused_with_the_reason(uri, why):
    found = problems_of({"name": "x", "cluster": {"storage_path": uri}})
    assert why in found["cluster.storage_path"]


def test_the_nodes_storage_variable_fills_storage_path_unless_the_spec_names_one(
    tmp_path, monkeypatch
):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: x\ncluster: {address: auto}\n")
    monkeypatch.setenv("PODIUM_STORAGE_PATH", "s3://tune/runs")
    assert load_spec(spec_file).cluster.storage_path == "s3://tune/runs"
    assert load_spec(spec_file).cluster.address == "auto"  # the rest of the section kept
    own = load_spec(spec_file, ["cluster.storage_path=/shared/ray"])
    assert own.cluster.storage_path == "/shared/ray"
    # A bad value from the variable is refused like a spec's, under the field's name.
    monkeypatch.setenv("PODIUM_STORAGE_PATH", "ftp://host/ray")
    with pytest.raises(SpecError) as e:
        load_spec(spec_file)
    assert [p.path for p in e.value.problems] == ["cluster.storage_path"]
    assert "'ftp'" in str(e.value) and "(from $PODIUM_STORAGE_PATH)" in str(e.value)
    monkeypatch.delenv("PODIUM_STORAGE_PATH")
    assert load_spec(spec_file).cluster.storage_path is None


def test_bad_values_inside_spaces_are_found():
    found = problems_of(
        {
            "name": "x",
            "model": {"dropout": {"choice": [0.1, 2.0]}, "hidden": {"grid": []}},
            "optimizer": {"name": "adam", "lr": {"loguniform": [0, 1]}},
            "training": {"max_epochs": {"randint": [5, 1]}},
        }
    )
    assert "2.0" in found["model.dropout"]
    assert "non-empty" in found["model.hidden"]
    assert "low > 0" in found["optimizer.lr"]
    assert "low < high" in found["training.max_epochs"]


def test_hyperparameter_an_optimizer_does_not_take():
    found = problems_of({"name": "x", "optimizer": {"name": "adam", "momentum": 0.9}})
    assert "'adam' takes no hyperparameter 'momentum'" in found["optimizer.momentum"]
    assert "betas" in found["optimizer.momentum"]


def test_conditional_hyperparameters_are_checked_per_branch():
    ok = {
        "name": "x",
        "optimizer": {
            "choice": [{"name": "nag", "momentum": {"uniform": [0.5, 0.9]}}, {"name": "adam"}]
        },
    }
    parse_spec(ok)
    bad = {
        "name": "x",
        "optimizer": {"choice": [{"name": "nag"}, {"name": "adam", "momentum": 0.9}]},
    }
    assert "optimizer[1].momentum" in problems_of(bad)
    mixed = {"name": "x", "optimizer": {"name": {"choice": ["nag", "adam"]}, "momentum": 0.9}}
    assert "conditional" in problems_of(mixed)["optimizer.momentum"]


def test_spaces_are_refused_in_settings_sections():
    found = problems_of({"name": "x", "search": {"num_samples": {"choice": [1, 2]}}})
    assert found["search.num_samples"] == "a search space is not allowed here"


def test_searcher_and_space_compatibility():
    grid_optuna = {
        "name": "x",
        "model": {"dropout": {"grid": [0.0, 0.1]}},
        "search": {"searcher": "optuna"},
    }
    assert "optuna cannot run grid" in problems_of(grid_optuna)["search.searcher"]
    ranges_grid = {
        "name": "x",
        "optimizer": {"name": "adam", "lr": {"uniform": [0.1, 0.2]}},
        "search": {"searcher": "grid"},
    }
    assert "grid can only enumerate" in problems_of(ranges_grid)["search.searcher"]


def test_overrides_set_nested_values_as_yaml():
    raw = {"name": "x", "search": {"num_samples": 8}}
    apply_overrides(
        raw,
        [
            "search.num_samples=3",
            "model.hidden=[32, 16]",
            "optimizer.lr={loguniform: [0.001, 0.1]}",
        ],
    )
    assert raw["search"]["num_samples"] == 3
    assert raw["model"]["hidden"] == [32, 16]
    assert raw["optimizer"]["lr"] == {"loguniform": [0.001, 0.1]}
    spec = parse_spec({**raw, "optimizer": {"name": "adam", **raw["optimizer"]}})
    assert spec.model["hidden"] == [32, 16]


def test_bad_override_is_a_spec_error():
    with pytest.raises(SpecError) as e:
        load_spec(DEFAULT_SPEC, ["search.num_samples"])
    assert "PATH=VALUE" in str(e.value)
    with pytest.raises(SpecError) as e:
        load_spec(DEFAULT_SPEC, ["search.num_samples=-3"])
    assert "search.num_samples" in str(e.value) and "-3" in str(e.value)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError) as e:
        load_spec(evil)
    assert "not valid YAML" in str(e.value)


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(listy)


def test_spec_hash_is_stable_and_sensitive():
    a, b = load_spec(), load_spec()
    assert a.spec_hash() == b.spec_hash()
    assert load_spec(overrides=["training.seed=1"]).spec_hash() != a.spec_hash()


def test_recipe_order_and_malformed_step_spaces_are_reported_not_crashed_on():
    prune = {"step": "prune", "method": "structured", "sparsity": 0.5}
    found = problems_of(
        {
            "name": "x",
            "recipe": [{"step": "quantize", "mode": {"choice": ["static", "qat"]}}, prune],
        }
    )
    assert "after quantize mode 'qat' (recipe[0])" in found["recipe[1].step"]
    found = problems_of({"name": "x", "recipe": [{"step": "quantize", "mode": {"choice": 3}}]})
    assert "non-empty list, got 3" in found["recipe[0].mode"]
    # qat last is the right order; static before prune is fine too
    for first, second in [
        (prune, {"step": "quantize", "mode": "qat"}),
        ({"step": "quantize"}, prune),
    ]:
        parse_spec({"name": "x", "recipe": [first, second]})


def test_choosing_the_winner_on_the_test_split_is_allowed_with_a_warning():
    assert parse_spec({"name": "w"}).warnings == ()
    spec = parse_spec({"name": "w", "promotion": {"selection_split": "test"}})
    [warning] = spec.warnings
    assert warning.startswith("promotion.selection_split: 'test' chooses the sweep's winner by ")
    assert "test_accuracy" in warning and "optimistic" in warning
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "w", "promotion": {"selection_split": "val"}})
    assert e.value.problems[0].path == "promotion.selection_split"


def test_overrides_inside_a_choice_of_sections():
    # The default spec's optimizer is a choice of a nag and an adam section.
    spec = load_spec(overrides=["optimizer.lr=0.02"])
    assert [b["lr"] for b in spec.optimizer["choice"]] == [0.02, 0.02]  # every branch
    spec = load_spec(overrides=["optimizer.name=adam"])
    assert spec.optimizer == {"name": "adam", "lr": {"loguniform": [0.0005, 0.01]}}  # its branch
    spec = load_spec(overrides=["optimizer.name=sgd"])
    assert spec.optimizer == {"name": "sgd"}  # no branch is sgd: one section of it alone
    spec = load_spec(overrides=["optimizer.name=sgd", "optimizer.lr=0.1"])
    assert spec.optimizer == {"name": "sgd", "lr": 0.1}
    with pytest.raises(SpecError) as e:
        load_spec(overrides=["search.num_samples.x=3"])
    assert "set the whole of it instead (--set search.num_samples=...)" in str(e.value)


def test_a_bad_model_name_is_shown_with_the_rule():
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "x", "promotion": {"model_name": "a/b"}})
    assert "promotion.model_name: 'a/b': a registered model's name starts with" in str(err.value)


@pytest.mark.parametrize("gpu", [0.25, 0.125, 1, 2, "auto"])
def test_resources_gpu_takes_a_share_or_auto(gpu):
    spec = parse_spec({"name": "x", "resources": {"cpu": 1, "gpu": gpu}})
    assert spec.resources.gpu == gpu


@pytest.mark.parametrize("gpu", ["half", "Auto", -0.5, [0.5]])
def test_resources_gpu_refuses_anything_else_naming_the_field_and_value(gpu):
    found = problems_of({"name": "x", "resources": {"cpu": 1, "gpu": gpu}})
    assert f"must be a number >= 0 or 'auto', got {gpu!r}" in found["resources.gpu"]


def test_gpu_auto_alone_is_enough_for_a_trial():
    assert parse_spec({"name": "x", "resources": {"cpu": 0, "gpu": "auto"}}).resources.gpu == "auto"


def test_an_unknown_key_lists_the_valid_ones_and_the_nearest():
    found = problems_of({"name": "x", "serch": {}, "search": {"num_sample": 3}})
    assert found["serch"].startswith("unknown section 'serch'; valid: cluster, model")
    assert found["serch"].endswith("(did you mean 'search'?)")
    assert "(did you mean 'num_samples'?)" in found["search.num_sample"]
    assert (
        "did you mean 'max_epochs'"
        in problems_of({"name": "x", "training": {"epoch": 3}})["training.epoch"]
    )


def test_a_module_function_reference_is_parsed_one_way_everywhere():
    from orchestrator.spec.schema import spec_schema
    from workers.registry import PLUGIN_REF, parse_plugin_ref

    assert parse_plugin_ref("team.models:bag") == ("team.models", "bag")
    for bad in ("a b:c", "a:b:c", ":c", "a:", "a..b:c", 3):
        assert parse_plugin_ref(bad) is None, bad
        found = problems_of({"name": "x", "task": bad})
        assert "(or module:function)" in found["task"], bad
    arch = spec_schema()["$defs"]["ModelKeys"]["properties"]["arch"]
    assert {"pattern": PLUGIN_REF.pattern, "type": "string"} in arch["anyOf"]


def test_settings_are_typed_strictly():
    found = problems_of({"name": "x", "promotion": {"enabled": 1}, "resources": {"cpu": "2"}})
    assert found["promotion.enabled"] == "must be true or false, got 1"
    assert found["resources.cpu"] == "must be a number >= 0, got '2'"
    # A YAML int stays an int (the dump and the spec hash keep what the file says).
    assert parse_spec({"name": "x", "resources": {"cpu": 2}}).resources.cpu == 2
    assert isinstance(parse_spec({"name": "x", "resources": {"cpu": 2}}).resources.cpu, int)


def test_rules_across_sections_are_reported_with_the_fields_problems():
    found = problems_of(
        {
            "name": "x",
            "search": {"num_samples": 0, "searcher": "nsga2", "scheduler": "pbt"},
            "model": {"dropout": {"grid": [0.1, 0.2]}},
        }
    )
    assert found["search.num_samples"] == "must be a positive integer, got 0"
    assert "pbt mutates trials itself" in found["search.scheduler"]
    assert "search.searcher" in found
