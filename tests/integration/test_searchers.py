"""The README's searchers and schedulers on the built-in default spec (a conditional space: a
choice of optimizer sections, a choice of hidden-size lists), as real sweeps."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import load_spec
from tracking import keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_ray():
    """One local Ray for the module's 17 sweeps, which join it as a sweep joins a cluster:
    starting and stopping a private Ray per sweep cost ~3 s each (``podium run``'s own start
    is tested in tests/integration/test_cli.py)."""
    import ray

    from orchestrator.execution.fit import QUIET_TUNE

    with pytest.MonkeyPatch.context() as env:
        for k, v in QUIET_TUNE.items():
            env.setenv(k, v)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


def _run(tmp_path, *overrides):
    spec = load_spec(overrides=list(overrides))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = api.run(spec, tracking_uri=uri, verbosity=0, workdir=tmp_path)
    return result, MlflowClient(uri, registry_uri=uri)


def test_optuna_with_asha_runs_the_default_spec_and_promotes(tmp_path):
    # Tune pickles the searcher, define-by-run space included, into its state at every save.
    result, client = _run(
        tmp_path,
        "search.searcher=optuna",
        "search.scheduler=asha",
        "search.num_samples=3",
        "training.max_epochs=2",
    )
    assert len(result.rows) == 3 and result.failed == 0
    for row in result.rows:
        params = client.get_run(row.run_id).data.params
        assert params["optimizer.name"] in ("nag", "adam")
        assert ("optimizer.momentum" in params) == (params["optimizer.name"] == "nag")
        assert params["model.hidden"] in ("[64]", "[128, 64]")
    assert result.promotion is not None and result.promotion.promoted


def test_pbt_runs_the_default_spec_and_records_what_trained_each_trial(tmp_path):
    result, client = _run(
        tmp_path,
        "search.scheduler=pbt",
        "search.num_samples=4",
        "training.max_epochs=6",
    )
    assert len(result.rows) == 4 and result.failed == 0
    assert all(r.status == "completed" for r in result.rows)
    exploited = 0
    for row in result.rows:
        run = client.get_run(row.run_id)
        lr = client.get_metric_history(row.run_id, keys.HPARAM_PREFIX + "optimizer.lr")
        # An exploit may move a trial ahead (epoch 1 -> a source's epoch-2 checkpoint): its
        # steps are then not all there, but the last one is.
        assert {m.step for m in lr} <= set(range(1, 7)) and max(m.step for m in lr) == 6
        # The last epoch's hyperparameters are the trial's final config, which the leaderboard
        # (and the promoted model's card) shows.
        last = max(lr, key=lambda m: (m.step, m.timestamp))
        assert last.value == pytest.approx(float(row.params["optimizer.lr"]))
        dropout = run.data.metrics[keys.HPARAM_PREFIX + "model.dropout"]
        assert 0.0 <= dropout <= 0.3  # perturbed within the space's bounds
        exploits = json.loads(run.data.tags.get(keys.TAG_EXPLOITS, "[]"))
        for exploit in exploits:
            assert exploit["source"] in {r.trial_id for r in result.rows} - {row.trial_id}
            assert 1 <= exploit["epoch"] < 6
        exploited += bool(exploits)
        # An exploit copies the source's structure with its checkpoint: the trial's model is
        # one architecture throughout, so every epoch's accuracy is a real one.
        assert all(
            m.value > 0.3 for m in client.get_metric_history(row.run_id, keys.VAL_ACCURACY)[2:]
        )
    assert exploited >= 1  # 4 trials, 6 epochs: the bottom quarter exploits at every interval
    assert result.promotion is not None and result.promotion.promoted


@pytest.mark.parametrize("scheduler", ["asha", "fifo", "hyperband", "median"])
@pytest.mark.parametrize("searcher", ["random", "optuna", "bohb"])
def test_every_searcher_with_every_scheduler_runs_the_default_spec(tmp_path, scheduler, searcher):
    result, _ = _run(
        tmp_path,
        f"search.scheduler={scheduler}",
        f"search.searcher={searcher}",
        "search.num_samples=2",
        "training.max_epochs=2",
    )
    assert len(result.rows) == 2 and result.failed == 0
    assert result.decision.winner is not None


@pytest.mark.parametrize(("searcher", "scheduler"), [("motpe", "asha"), ("nsga2", "hyperband")])
def test_a_multi_objective_searcher_searches_the_front_the_sweep_promotes_from(
    tmp_path, searcher, scheduler
):
    result, _ = _run(
        tmp_path,
        f"search.searcher={searcher}",
        f"search.scheduler={scheduler}",
        "search.num_samples=4",
        "training.max_epochs=2",
        "promotion.strategy=pareto",
        "promotion.objectives=[{metric: test_accuracy, mode: max}, "
        "{metric: model_size_bytes, mode: min}]",
    )
    assert len(result.rows) == 4 and result.failed == 0
    assert result.decision.winner is not None
    assert any("Pareto front over val_accuracy (max), model_size_bytes (min)" in r
               for r in result.decision.reasons)  # fmt: skip


def test_the_searchers_that_cannot_run_a_space_say_so():
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError, match="grid can only enumerate choice and grid spaces"):
        load_spec(overrides=["search.searcher=grid"])
    with pytest.raises(SpecError, match="pbt mutates trials itself"):
        load_spec(overrides=["search.searcher=optuna", "search.scheduler=pbt"])


@pytest.mark.timeout(180)  # a hang fails here, not at the suite's 15 minutes
def test_hyperband_finishes_when_the_last_result_overtakes_a_pause(tmp_path, monkeypatch):
    """On a loaded machine the second trial's last result can reach the driver before the first
    trial's pause-save answers (orchestrator/execution/_ray/hyperband.py): Tune's own HyperBand
    then waited for ever. The real Tune controller is made to process events in that order."""
    from ray.tune.execution.tune_controller import TuneController

    held: list = []
    released: list = []
    on_save, on_result = TuneController._on_saving_result, TuneController._on_training_result

    def hold_pause_save(self, trial, value):
        if self._cached_trial_decisions.get(trial.trial_id) == "PAUSE" and not held + released:
            held.append((trial, value))  # answered after the bracket's last result
            return None
        return on_save(self, trial, value)

    def result_then_release(self, trial, result):
        out = on_result(self, trial, result)
        # after the result that ends the bracket: another trial's at the held trial's epoch
        epoch = result.get("training_iteration", 0)
        if held and held[0][0] is not trial:
            paused, value = held[0]
            if epoch >= paused.last_result["training_iteration"]:
                released.append(paused.trial_id)
                on_save(self, *held.pop())
        return out

    monkeypatch.setattr(TuneController, "_on_saving_result", hold_pause_save)
    monkeypatch.setattr(TuneController, "_on_training_result", result_then_release)
    result, _ = _run(
        tmp_path, "search.scheduler=hyperband", "search.num_samples=2", "training.max_epochs=2"
    )
    assert len(released) == 1 and held == []  # the order was forced, and resolved
    assert len(result.rows) == 2 and result.failed == 0
    assert all(r.status == "completed" for r in result.rows)


def test_the_training_knobs_are_searched_logged_and_patience_ends_trials_early(tmp_path):
    """training.grad_clip as a space, accumulate, label_smoothing and patience (issue 28): each a
    param of every trial's run; at a learning rate too small to change a prediction, patience 1
    ends each trial at its second epoch of six, tested and checkpointed there."""
    result, client = _run(
        tmp_path,
        "search.num_samples=1",
        "training.max_epochs=6",
        "training.grad_clip={grid: [0.5, 1.0]}",
        "training.accumulate=2",
        "training.label_smoothing=0.1",
        "training.patience=1",
        "optimizer={name: adam, lr: 1.0e-9}",
        "model={arch: mlp, hidden: [32]}",  # no batch norm: its statistics move at any lr
    )
    assert len(result.rows) == 2 and all(r.status == "completed" for r in result.rows)
    clips = set()
    for row in result.rows:
        params = client.get_run(row.run_id).data.params
        clips.add(params["training.grad_clip"])
        assert params["training.accumulate"] == "2" and params["training.patience"] == "1"
        assert params["training.label_smoothing"] == "0.1"
        history = client.get_metric_history(row.run_id, keys.VAL_ACCURACY)
        assert sorted(m.step for m in history) == [1, 2]  # out of patience at epoch 2
        assert keys.TEST_ACCURACY in client.get_run(row.run_id).data.metrics
    assert clips == {"0.5", "1.0"}
    assert result.promotion is not None and result.promotion.promoted
