"""A finished trial's running statistics are dropped; what selection reads stays."""

from __future__ import annotations

from ray.tune.experiment import Trial

from orchestrator.tune_memory import ForgetFinishedTrials, forget_statistics


def _trial_with_history(epochs: int) -> Trial:
    trial = Trial("podium_trial", stub=True)
    for epoch in range(1, epochs + 1):
        trial.update_last_result(
            {"val_accuracy": epoch / epochs, "train_loss": 1 / epoch, "epoch": epoch}
        )
    return trial


def test_forgetting_keeps_the_last_result_and_shrinks_the_saved_state():
    trial = _trial_with_history(10)
    before = len(trial.run_metadata.get_json_state())
    assert "val_accuracy" in trial.metric_analysis
    forget_statistics(trial)
    assert trial.metric_analysis == {} and trial.metric_n_steps == {}
    assert trial.last_result["val_accuracy"] == 1.0  # what selection and the leaderboard read
    after = len(trial.run_metadata.get_json_state())  # the cached JSON was rebuilt
    assert after < before / 2


def test_the_callback_forgets_completed_and_errored_trials():
    done, failed = _trial_with_history(3), _trial_with_history(3)
    callback = ForgetFinishedTrials()
    callback.on_trial_complete(iteration=1, trials=[done, failed], trial=done)
    callback.on_trial_error(iteration=1, trials=[done, failed], trial=failed)
    assert done.metric_analysis == {} and failed.metric_analysis == {}
