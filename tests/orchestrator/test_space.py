"""Spec → Ray space → sampled config → concrete trial spec."""

from __future__ import annotations

import pickle

import optuna
from ray import tune

from orchestrator.search.space import (
    OptunaSpace,
    flat_space,
    flatten_params,
    iter_leaves,
    resolve,
    template_of,
)
from orchestrator.spec import load_spec, parse_spec


def test_flat_space_keys_and_domains():
    spec = parse_spec(
        {
            "name": "x",
            "model": {"hidden": {"choice": [[64], [128, 64]]}, "dropout": {"uniform": [0, 0.5]}},
            "optimizer": {"name": "adam", "lr": {"loguniform": [1e-4, 1e-1]}},
            "training": {"max_epochs": {"randint": [2, 4]}, "seed": {"grid": [0, 1]}},
        }
    )
    space = flat_space(template_of(spec))
    assert set(space) == {
        "model.hidden",
        "model.dropout",
        "optimizer.lr",
        "training.max_epochs",
        "grid",
    }
    assert isinstance(space["optimizer.lr"], tune.search.sample.Float)
    assert space["grid"] == {"grid_search": [{"training.seed": 0}, {"training.seed": 1}]}
    # randint bounds are inclusive in the spec, exclusive in Ray
    assert space["training.max_epochs"].upper == 5


def test_grid_searcher_turns_choices_into_grids():
    spec = parse_spec(
        {"name": "x", "model": {"dropout": {"choice": [0.0, 0.1]}}, "search": {"searcher": "grid"}}
    )
    assert flat_space(template_of(spec), grid_choices=True)["grid"] == {
        "grid_search": [{"model.dropout": 0.0}, {"model.dropout": 0.1}]
    }


def test_grids_inside_section_branches_do_not_multiply_across_branches():
    spec = parse_spec(
        {
            "name": "x",
            "optimizer": {
                "grid": [
                    {"name": "momentum", "lr": {"grid": [0.1, 0.01]}},
                    {"name": "adam", "lr": {"grid": [0.01, 0.001, 0.0001]}},
                ]
            },
            "training": {"seed": {"grid": [0, 1]}},
        }
    )
    template = template_of(spec)
    variants = flat_space(template)["grid"]["grid_search"]
    assert len(variants) == (2 + 3) * 2
    resolved = [resolve(template, {"grid": v})["optimizer"] for v in variants]
    assert {(o["name"], o["lr"]) for o in resolved} == {
        ("momentum", 0.1),
        ("momentum", 0.01),
        ("adam", 0.01),
        ("adam", 0.001),
        ("adam", 0.0001),
    }


def test_conditional_choice_resolves_only_the_chosen_branch():
    spec = load_spec()
    template = template_of(spec)
    keys = dict(iter_leaves(template, ""))
    assert "optimizer" in keys and "optimizer[0].momentum" in keys and "optimizer[1].lr" in keys
    config = {
        "model.hidden": [64],
        "model.batch_norm": True,
        "model.dropout": 0.1,
        "optimizer": 1,
        "optimizer[0].lr": 0.05,
        "optimizer[0].momentum": 0.9,
        "optimizer[1].lr": 0.003,
    }
    concrete = resolve(template, config)
    assert concrete["optimizer"] == {"name": "adam", "lr": 0.003}
    assert concrete["model"]["hidden"] == [64]
    params = flatten_params(concrete)
    assert params["optimizer.name"] == "adam" and "optimizer.momentum" not in params
    assert params["model.dropout"] == 0.1


def test_optuna_space_samples_only_active_branch_and_survives_pickling():
    template = template_of(load_spec())
    # Tune pickles the searcher with its space into every experiment-state save.
    fn = pickle.loads(pickle.dumps(OptunaSpace(template)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        fn(trial)
        branch = trial.params["optimizer"]
        other = 1 - branch
        assert not any(k.startswith(f"optimizer[{other}]") for k in trial.params)
        concrete = resolve(template, trial.params)  # the hidden-size list goes by index
        assert concrete["model"]["hidden"] in ([64], [128, 64])
        assert concrete["optimizer"]["name"] == ("nag", "adam")[branch]
        study.tell(trial, 0.5)
