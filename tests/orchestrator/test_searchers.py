"""Trials an early-stopping scheduler stopped reach Optuna as pruned (no Ray started)."""

from __future__ import annotations

import pickle

import pytest
from optuna.trial import TrialState

from orchestrator.search.schedulers import build_param_space
from orchestrator.search.space import RERUN_KEY
from orchestrator.spec import load_spec
from tracking import keys


def _searcher():
    spec = load_spec(overrides=["search.searcher=optuna", "search.scheduler=asha"])
    _, searcher = build_param_space(spec)
    searcher.set_search_properties("val_accuracy", "max", {})
    return searcher


def test_a_stopped_trial_is_pruned_a_finished_one_complete_a_failed_one_failed():
    searcher = _searcher()
    for trial_id in ("stopped", "finished", "failed"):
        assert searcher.suggest(trial_id)  # a config from the define-by-run space
        searcher.on_trial_result(trial_id, {"val_accuracy": 0.5, "training_iteration": 1})
    searcher.on_trial_complete("stopped", {"val_accuracy": 0.5, "training_iteration": 1})
    done = {"val_accuracy": 0.9, "training_iteration": 3, keys.DONE: True}
    searcher.on_trial_complete("finished", done)
    searcher.on_trial_complete("failed", None, error=True)
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    # The pruned trial keeps what it reported, which TPE ranks it by.
    assert searcher._ot_study.trials[0].intermediate_values == {1: 0.5}
    assert searcher._ot_study.trials[1].value == 0.9


def test_the_searcher_pickles_with_its_space():
    # Tune saves the searcher into its experiment state (the crash issue 18 named).
    restored = pickle.loads(pickle.dumps(_searcher()))
    assert restored.suggest("t1")


# ---------------------------------------------------------------- BOHB, several objectives


def _built(*overrides):
    from orchestrator.search.schedulers import build_param_space

    _, searcher = build_param_space(load_spec(overrides=list(overrides)))
    return searcher


TWO_OBJECTIVES = (
    "promotion.objectives=[{metric: test_accuracy, mode: max}, "
    "{metric: model_size_bytes, mode: min}]"
)


def test_bohb_draws_a_third_at_random_and_models_the_rest_on_the_conditional_space():
    from orchestrator.search.searchers import BOHB_RANDOM_FRACTION

    searcher = _built("search.searcher=bohb", "search.scheduler=hyperband")
    sampler = searcher._ot_study.sampler
    trials = [optuna_trial(n) for n in range(600)]
    share = sum(sampler._draws_randomly(t) for t in trials) / len(trials)
    assert abs(share - BOHB_RANDOM_FRACTION) < 0.06
    assert [sampler._draws_randomly(t) for t in trials] == [
        sampler._draws_randomly(t) for t in trials
    ]  # decided by trial number: a restored study draws the same way
    # Brackets stop trials at several budgets; the model goes on from them (pruned, ranked by
    # the budget they reached), and every suggestion is a point of the conditional space.
    for i in range(14):
        config = searcher.suggest(f"t{i}")
        assert ("optimizer[0].momentum" in config) == (config["optimizer"] == 0)
        epochs = 1 + i % 3
        for epoch in range(1, epochs + 1):
            result = {"val_accuracy": 0.5 + 0.02 * i * epoch, "training_iteration": epoch}
            searcher.on_trial_result(f"t{i}", result)
        done = {keys.DONE: True} if epochs == 3 else {}
        searcher.on_trial_complete(f"t{i}", {**result, **done})
    states = [t.state for t in searcher._ot_study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.PRUNED) == 10


def optuna_trial(number):
    from types import SimpleNamespace

    return SimpleNamespace(number=number)


def test_a_multi_objective_searcher_tells_the_objectives_on_their_validation_twins():
    searcher = _built("search.searcher=nsga2", TWO_OBJECTIVES)
    assert searcher._metric == ["val_accuracy", "model_size_bytes"]
    assert searcher.metric == "val_accuracy"  # what Tune checks every per-epoch result for
    assert [d.name for d in searcher._ot_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial_id in ("done", "stopped", "diverged", "unmeasured"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"val_accuracy": 0.5, "training_iteration": 1})
    final = {"val_accuracy": 0.9, "model_size_bytes": 70000, keys.DONE: True}
    searcher.on_trial_complete("done", final)
    searcher.on_trial_complete("stopped", {"val_accuracy": 0.5, "training_iteration": 1})
    searcher.on_trial_complete("diverged", {**final, "val_accuracy": float("nan")})
    searcher.on_trial_complete("unmeasured", {"val_accuracy": 0.9, keys.DONE: True})
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.FAIL,
    ]
    assert trials[0].values == [0.9, 70000.0]


def test_multi_objective_searchers_need_two_objectives():
    from orchestrator.spec import SpecError

    for name in ("motpe", "nsga2"):
        with pytest.raises(SpecError, match="needs two or more of them"):
            load_spec(overrides=[f"search.searcher={name}"])
        assert _built(f"search.searcher={name}", TWO_OBJECTIVES) is not None


# --------------------------------------------------------------------------- seeding


def test_earlier_trials_map_back_to_points_of_the_space_and_seed_the_study():
    from orchestrator.search.searchers import Evaluated
    from orchestrator.search.space import flatten_params, point_of, resolve, template_of

    spec = load_spec(overrides=["search.searcher=optuna"])
    template, source = template_of(spec), _searcher()
    points = []
    for i in range(30):
        config = source.suggest(f"t{i}")
        # What MLflow holds of the trial: its concrete spec's params, as strings.
        params = {k: str(v) for k, v in flatten_params(resolve(template, config)).items()}
        point = point_of(template, params)
        assert point == source._ot_trials[f"t{i}"].params
        points.append(Evaluated(point, (0.5 + i / 100,), source=f"run{i}"))
    # A fixed setting that differs, or a value outside its space, is not a point of this space.
    assert point_of(template, {**params, "training.batch_size": "32"}) is None
    assert point_of(template, {**params, "model.dropout": "0.9"}) is None
    assert point_of(template, {**params, "model.hidden": "[256]"}) is None
    stopped = Evaluated(points[0].params, None, pruned_at=2, last=0.4, source="run-stopped")
    target = _searcher()
    assert target.seed_with([*points, stopped]) == 31
    trials = target._ot_study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 30 + [TrialState.PRUNED]
    assert trials[-1].intermediate_values == {2: 0.4}
    assert trials[3].system_attrs["podium_seeded_from"] == "run3"
    # 30 seeded trials: TPE's start-up is over, the next config comes from its model.
    assert target.suggest("next") and len(target._ot_study.trials) == 32
    # Configs to train again come first, in order, then the model's again.
    again = [points[7].params, points[2].params]
    assert target.run_first(again) == 2
    for i, params in enumerate(again):
        assert target.suggest(f"again{i}") and target._ot_trials[f"again{i}"].params == params
    assert target.suggest("after") and len(target._ot_study.trials) == 35
    assert target._ot_trials["again0"].user_attrs == {RERUN_KEY: True}


def test_a_config_trained_again_is_not_stopped_early_and_others_still_are():
    """The searcher marks a warm start's known config in its trial's config; ASHA still
    compares with it, but does not stop it (a real Tune scheduler and trials). The median rule
    is built the same way."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from orchestrator.search.early_stop import FinishingMedian
    from orchestrator.search.schedulers import build_scheduler

    median = load_spec(overrides=["search.searcher=optuna", "search.scheduler=median"])
    assert isinstance(build_scheduler(median), FinishingMedian)
    spec = load_spec(overrides=["search.searcher=optuna", "search.scheduler=asha"])
    searcher = _searcher()
    known = searcher.suggest("new")
    searcher.run_first([searcher._ot_trials["new"].params])
    again = searcher.suggest("again")
    assert again == {**known, RERUN_KEY: True} and RERUN_KEY not in known
    stopper = build_scheduler(spec)
    stopper.set_search_properties("val_accuracy", "max")
    configs = [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}, {"a": 5}, again]
    trials = [Trial("train", config=c, stub=True) for c in configs]
    actions = []
    for epoch in (1, 2, 3):
        for trial, acc in zip(trials, [0.9, 0.9, 0.8, 0.9, 0.1, 0.1], strict=True):
            if epoch == 1:
                stopper.on_trial_add(None, trial)
            result = {"val_accuracy": acc + epoch / 100, "training_iteration": epoch}
            actions.append(stopper.on_trial_result(None, trial, result))
    assert TrialScheduler.STOP in actions[:-1]  # the poor new config was stopped
    assert actions[5::6] == [TrialScheduler.CONTINUE] * 3  # the known one never


def test_warm_start_is_checked_and_needs_a_model_based_searcher():
    from orchestrator.spec import SpecError

    ok = load_spec(overrides=["search.searcher=bohb", "search.warm_start={experiment: earlier}"])
    assert ok.search.warm_start == {"experiment": "earlier"}
    with pytest.raises(SpecError, match="'random' does not learn from earlier trials"):
        load_spec(overrides=["search.warm_start={experiment: earlier, top: 5}"])
    with pytest.raises(SpecError) as e:
        load_spec(
            overrides=["search.searcher=optuna", "search.warm_start={experiment: '', top: 0, k: 1}"]
        )
    text = str(e.value)
    assert "search.warm_start.experiment" in text and "search.warm_start.top" in text
    assert "search.warm_start.k" in text
    with pytest.raises(SpecError, match=r"search\.warm_start\.rerun: .*0 or more, got -1"):
        load_spec(
            overrides=["search.searcher=optuna", "search.warm_start={experiment: e, rerun: -1}"]
        )


def test_a_resume_command_after_more_resumes_without_it():
    import argparse

    from orchestrator.commands import _resume_command

    args = argparse.Namespace(argv=["run", "s.yaml", "--more", "4", "--set", "a=1"])
    assert _resume_command(args) == "podium run s.yaml --set a=1 --resume"


# ---------------------------------------------------------------- random draws


def _random_draws(seed_offset: int, *overrides: str) -> list[dict]:
    from ray import tune

    spec = load_spec(overrides=["search.num_samples=3", *overrides])
    space, draws = build_param_space(spec, seed_offset=seed_offset)
    draws.add_configurations(
        [tune.Experiment("x", run=lambda c: None, config=space, num_samples=3)]
    )
    return [t.config for t in iter(draws.next_trial, None)]


def test_random_draws_follow_the_spec_seed_and_the_offset():
    # Two runs of one spec sample the same configs; --more (an offset) samples new ones.
    first = _random_draws(0)
    assert first == _random_draws(0)
    assert len({repr(c) for c in first}) == 3
    assert first != _random_draws(3)
    assert first != _random_draws(0, "training.seed=1")


def test_hyperband_runs_a_config_trained_again_first_outside_its_brackets():
    """A real Tune HyperBand (Podium's) with real trials: the known config runs before the
    brackets' trials and is never paused or stopped; the brackets hold only the others."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from orchestrator.search.early_stop import FinishingHyperBand
    from orchestrator.search.schedulers import build_scheduler

    spec = load_spec(overrides=["search.searcher=bohb", "search.scheduler=hyperband"])
    hyperband = build_scheduler(spec)
    assert isinstance(hyperband, FinishingHyperBand)
    hyperband.set_search_properties("val_accuracy", "max")
    others = [Trial("train", config={"a": i}, stub=True) for i in range(3)]
    again = Trial("train", config={"a": 9, RERUN_KEY: True}, stub=True)
    for trial in [*others, again]:
        hyperband.on_trial_add(None, trial)
    assert hyperband.choose_trial_to_run(None) is again
    in_brackets = [t for band in hyperband._hyperbands for b in band for t in b.current_trials()]
    assert again not in in_brackets and set(in_brackets) == set(others)
    for epoch in range(1, spec.training_max_epochs() + 1):
        result = {"val_accuracy": 0.1, "training_iteration": epoch}
        assert hyperband.on_trial_result(None, again, result) == TrialScheduler.CONTINUE
    hyperband.on_trial_complete(None, again, {})
    assert hyperband.choose_trial_to_run(None) in others
