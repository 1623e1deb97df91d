"""PBT on Podium's spaces: which leaves mutate, bounds, and the final report (no Ray started)."""

from __future__ import annotations

import pickle

from ray.tune.schedulers import TrialScheduler

from orchestrator.search.pbt import (
    BudgetAwarePBT,
    build_pbt,
    clip_to_space,
    mutable_leaves,
    spec_path,
    tracked_hparams,
)
from orchestrator.search.space import template_of
from orchestrator.spec import load_spec
from tracking import keys


def test_only_numbers_that_keep_every_saved_shape_mutate_on_the_default_spec():
    leaves = mutable_leaves(template_of(load_spec()))
    # hidden (a list), batch_norm and the optimizer's branch change what a checkpoint holds.
    assert sorted(leaves) == [
        "model.dropout",
        "optimizer[0].lr",
        "optimizer[0].momentum",
        "optimizer[1].lr",
    ]
    assert tracked_hparams(template_of(load_spec())) == [
        "model.dropout",
        "optimizer.lr",
        "optimizer.momentum",
    ]


def test_numeric_choices_outside_the_model_mutate_and_structural_values_do_not():
    template = {
        "task": "digits",
        "model": {"arch": "mlp", "hidden": [32], "channels": {"choice": [8, 16]}},
        "optimizer": {"name": {"choice": ["adam", "sgd"]}, "lr": 0.01},
        "training": {
            "batch_size": {"choice": [32, 64]},
            "max_epochs": {"choice": [4, 8]},
            "seed": {"randint": [0, 3]},
            "l1_penalty": {"uniform": [0.0, 0.01]},
        },
        "recipe": [{"step": "prune", "sparsity": {"uniform": [0.1, 0.5]}}],
    }
    assert sorted(mutable_leaves(template)) == ["training.batch_size", "training.l1_penalty"]


def test_perturbed_values_are_clipped_to_their_space():
    leaves = {
        "model.dropout": {"uniform": [0.0, 0.3]},
        "optimizer[0].lr": {"loguniform": [0.01, 0.2]},
        "training.batch_size": {"randint": [16, 64]},
    }
    config = {"model.dropout": 0.36, "optimizer[0].lr": 0.008, "training.batch_size": 76.8}
    assert clip_to_space(config, leaves) == {
        "model.dropout": 0.3,
        "optimizer[0].lr": 0.01,
        "training.batch_size": 64,
    }
    inside = {"model.dropout": 0.2, "optimizer[0].lr": 0.05, "training.batch_size": 20}
    assert clip_to_space(inside, leaves) == inside


def test_spec_path_drops_branch_indices():
    assert spec_path("optimizer[1].lr") == "optimizer.lr"
    assert spec_path("model.dropout") == "model.dropout"


def test_a_trials_final_report_is_never_exploited():
    pbt = build_pbt(template_of(load_spec()), interval=1)
    assert isinstance(pbt, BudgetAwarePBT)
    # The final report returns before PBT looks at the trial or the controller at all.
    assert pbt.on_trial_result(None, None, {keys.DONE: True}) == TrialScheduler.CONTINUE
    # Tune pickles the scheduler with the Tuner (its explore function is a class for that).
    restored = pickle.loads(pickle.dumps(pbt))
    assert set(restored._hyperparam_mutations) == set(mutable_leaves(template_of(load_spec())))


def test_a_choice_of_numbers_is_shifted_or_resampled_never_multiplied():
    template = {"training": {"batch_size": {"choice": [32, 64, 128]}}}
    pbt = build_pbt(template, interval=2)
    # A list is what Tune's explore shifts to a neighbour or resamples; a Domain it would scale.
    assert pbt._hyperparam_mutations == {"training.batch_size": [32, 64, 128]}
