"""Trials an early-stopping scheduler stopped reach Optuna as pruned (no Ray started)."""

from __future__ import annotations

import pickle

from optuna.trial import TrialState

from orchestrator.schedulers import build_param_space
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
