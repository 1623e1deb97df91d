"""A tiny real sweep end to end: local Ray, SQLite MLflow in a temp folder, registry, reload."""

from __future__ import annotations

import re

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tracking import keys
from workers.tasks import load_task

pytestmark = pytest.mark.slow

SPEC = {
    "name": "it-sweep",
    "task": "digits",
    "model": {"arch": "mlp", "hidden": [32], "dropout": {"choice": [0.0, 0.1]}},
    "optimizer": {
        "choice": [
            {"name": "nag", "lr": {"loguniform": [0.02, 0.1]}, "momentum": 0.9},
            {"name": "adam", "lr": 0.005},
        ]
    },
    "training": {"max_epochs": 3, "batch_size": 64, "seed": 0},
    "search": {"num_samples": 3, "scheduler": "fifo"},
    "promotion": {"model_name": "it-model"},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = api.run(parse_spec(SPEC), tracking_uri=uri, verbosity=0, workdir=folder)
    return result, MlflowClient(uri, registry_uri=uri), uri


def test_parent_run_has_spec_and_leaderboard(sweep):
    result, client, _ = sweep
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[keys.TAG_ROLE] == keys.ROLE_SWEEP
    names = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {keys.SPEC_ARTIFACT, keys.LEADERBOARD_ARTIFACT} <= names
    spec_text = mlflow.artifacts.load_text(f"runs:/{result.parent_run_id}/{keys.SPEC_ARTIFACT}")
    assert "it-sweep" in spec_text


def test_child_runs_have_params_histories_final_metrics_and_tags(sweep):
    result, client, _ = sweep
    assert len(result.rows) == 3 and all(r.status == "completed" for r in result.rows)
    for row in result.rows:
        run = client.get_run(row.run_id)
        assert run.data.tags[keys.TAG_PARENT_RUN] == result.parent_run_id
        assert run.data.tags[keys.TAG_TRIAL_ID] == row.trial_id
        assert run.data.tags[keys.TAG_NODE] and run.data.tags[keys.TAG_DEVICE] == "cpu"
        assert run.data.tags[keys.TAG_STATUS] == "completed"
        assert run.data.params["optimizer.name"] in ("nag", "adam")
        assert float(run.data.params["optimizer.lr"]) > 0
        assert run.data.params["model.dropout"] in ("0.0", "0.1")
        if run.data.params["optimizer.name"] == "adam":
            assert "optimizer.momentum" not in run.data.params  # conditional space
        for metric in keys.EPOCH_METRICS:
            history = client.get_metric_history(row.run_id, metric)
            assert sorted(m.step for m in history) == [1, 2, 3], metric  # exactly one per epoch
        for metric in keys.FINAL_METRICS:
            assert metric in run.data.metrics
        assert 0.5 < run.data.metrics[keys.TEST_ACCURACY] <= 1.0


def test_champion_is_registered_and_reloads_with_the_logged_accuracy(sweep):
    result, client, uri = sweep
    assert result.promotion is not None
    version = client.get_model_version_by_alias("it-model", "champion")
    assert version.run_id == result.decision.winner.run_id
    assert version.tags[keys.TAG_SOURCE_RUN] == version.run_id
    # Chosen on validation (the test split is not peeked at within a sweep).
    best = max(r.metrics[keys.VAL_ACCURACY] for r in result.rows)
    assert result.decision.winner.metrics[keys.VAL_ACCURACY] == best
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # The registered model is the ONNX file (MLflow's onnx flavor): any pyfunc loader runs it.
    served = mlflow.pyfunc.load_model("models:/it-model@champion")
    assert served.metadata.flavors.keys() >= {"onnx", "python_function"}
    data = load_task("digits", 0)
    # It takes digits as load_digits() gives them (64 pixels 0..16) and answers a label.
    raw, y = data.pipeline.raw_test
    labels = served.predict(raw.numpy())["label"]
    correct = sum(label == str(t) for label, t in zip(labels, y.tolist(), strict=True))
    logged = client.get_run(version.run_id).data.metrics[keys.TEST_ACCURACY]
    assert correct / len(y) == pytest.approx(logged, abs=1e-12)
    # Without a recipe the PyTorch module is the same model: its copy, in eval mode (dropout
    # off, batch-norm running statistics), in MLflow's pickle format; it takes model inputs.
    model = mlflow.pytorch.load_model(f"runs:/{version.run_id}/model_torch")
    with torch.no_grad():
        assert [str(i) for i in model(data.x_test).argmax(1).tolist()] == list(labels)


def test_leaderboard_reads_the_sweep_back(sweep, tmp_path):
    result, _, uri = sweep
    rows = api.leaderboard("it-sweep", tracking_uri=uri)
    assert [r.trial_id for r in rows][0] == result.decision.winner.trial_id
    assert {r.run_id for r in rows} == {r.run_id for r in result.rows}


def test_sweep_publishes_its_plots_on_the_parent_run(sweep):
    result, client, _ = sweep
    names = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {keys.PARETO_PLOT_ARTIFACT, keys.CURVES_PLOT_ARTIFACT} <= names


def test_tune_let_go_of_the_trials_and_the_ledger_has_them(sweep):
    """Tune's saved state ends with only the last trial in it (the driver's memory stays flat;
    Tune cannot resume from a state with none); the sweep's ledger, beside it, has the others,
    and, once the sweep ended, that last one too (``--more`` reads a whole sweep from it)."""
    import json
    from pathlib import Path

    from orchestrator.execution.ledger import LEDGER_FILE, TrialLedger

    result, client, _ = sweep
    experiment = Path(client.get_run(result.parent_run_id).data.tags[keys.TAG_RAY_PATH])
    state = json.loads(max(experiment.glob("experiment_state-*.json")).read_text())
    [(kept, _)] = state["trial_data"]
    entries = TrialLedger(experiment / LEDGER_FILE).entries()
    assert json.loads(kept)["trial_id"] in entries
    assert set(entries) == {r.trial_id for r in result.rows}
    for row in result.rows:
        entry = entries[row.trial_id]
        assert entry.status == row.status == "completed"
        assert entry.last[keys.TEST_ACCURACY] == row.metrics[keys.TEST_ACCURACY]
        assert Path(entry.checkpoint).is_dir()


def test_keep_finished_leaves_every_trial_in_tune_and_counts_each_once(tmp_path, capfd):
    """``keep_finished=True`` (plain Tune's behaviour, the benchmark's baseline): Tune's saved
    state keeps all trials, the ledger still has them, and the progress view, which sees them
    in Tune's list, does not count them again from the ledger."""
    import json
    from pathlib import Path

    from orchestrator.execution.ledger import LEDGER_FILE, TrialLedger
    from orchestrator.execution.runner import run_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = {"num_samples": 6, "scheduler": "fifo"}
    spec = parse_spec(
        {**SPEC, "name": "it-keep", "search": search, "promotion": {"enabled": False}}
    )
    result = run_experiment(
        spec, tracking_uri=uri, verbosity=1, workdir=tmp_path, keep_finished=True
    )
    ids = {r.trial_id for r in result.rows}
    assert len(ids) == 6 and all(r.status == "completed" for r in result.rows)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = Path(client.get_run(result.parent_run_id).data.tags[keys.TAG_RAY_PATH])
    state = json.loads(max(experiment.glob("experiment_state-*.json")).read_text())
    assert {json.loads(t)["trial_id"] for t, _ in state["trial_data"]} == ids
    assert set(TrialLedger(experiment / LEDGER_FILE).entries()) == ids
    done = [int(m) for m in re.findall(r"(\d+)/6 done", capfd.readouterr().err)]
    assert done and done[-1] == 6 and max(done) == 6, done
