"""A team's own task and model, end to end: the example folder, plug-in checks from the CLI,
regression, a dataset task, and a plug-in bug that stops the sweep early."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tests.fixtures_services import RayNodes, has_ray_client, post_when_up, user_env
from tests.integration.test_cli import podium

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parents[2] / "examples" / "own-model"


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("team") / "own-model"
    shutil.copytree(EXAMPLE, folder)
    out = podium("run", "spec.yaml", "--set", "search.num_samples=3", cwd=folder, env=_no_path())
    return folder, out


def _no_path() -> dict:
    return user_env(drop=("PYTHONPATH",))  # a user's shell: nothing another test left behind


def test_the_example_runs_from_its_folder_and_promotes(own_model):
    folder, out = own_model
    assert out.returncode == 0, out.stderr[-3000:]
    assert "champion: models:/own-model-classifier@champion = version 1" in out.stdout
    assert "Traceback" not in out.stderr


def test_the_plug_in_models_own_hyperparameters_are_the_trials_params(own_model):
    folder, _ = own_model
    uri = f"sqlite:///{folder / 'podium-runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("own-model")
    trials = [
        r for r in client.search_runs([exp.experiment_id]) if "podium.trial_id" in r.data.tags
    ]
    assert len(trials) == 3
    for run in trials:
        assert run.data.params["model.width"] in ("16", "32")
        assert run.data.params["model.activation"] in ("relu", "gelu")
        assert 1 <= int(run.data.params["model.depth"]) <= 3
        assert 0 <= run.data.metrics["test_worst_class_recall"] <= 1  # the task's own metric


def ask_the_champion(folder: Path, model: str, body: dict) -> dict:
    """``podium serve models:/MODEL@champion`` from ``folder``, asked ``body`` once it is up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve"]
        + [f"models:/{model}@champion", "--port", str(port)],
        cwd=folder,
        env=_no_path(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        return post_when_up(f"http://127.0.0.1:{port}/invocations", body, server)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_example(tmp_path: Path, spec: str, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    """``podium run SPEC ARGS`` in a copy of the example folder, as a user's shell would."""
    folder = tmp_path / "own-model"
    shutil.copytree(EXAMPLE, folder)
    return folder, podium("run", spec, *args, cwd=folder, env=_no_path())


def test_podium_serve_answers_with_the_champion(own_model):
    folder, _ = own_model
    # Measurements in centimetres, as load_iris() gives them: the task's own preprocess
    # (standardising, fitted on its training split) is inside the served graph.
    body = {"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
    answer = ask_the_champion(folder, "own-model-classifier", body)
    first, second = answer["predictions"]
    assert set(first["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert (first["label"], second["label"]) == ("setosa", "virginica")


def test_a_model_of_two_input_tensors_trains_promotes_and_is_served_by_name(tmp_path):
    import mlflow.pyfunc
    import numpy as np

    quick = ["--set", "search.num_samples=2", "--set", "training.max_epochs=5"]
    folder, out = run_example(tmp_path, "mixed.yaml", *quick)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "champion: models:/own-mixed-regressor@champion = version 1" in out.stdout
    # MLflow's own loader takes both inputs by name, as the signature says.
    uri = f"sqlite:///{folder / 'podium-runs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # another test may have pointed it at its own store
    loaded = mlflow.pyfunc.load_model("models:/own-mixed-regressor@champion")
    assert loaded.metadata.get_input_schema().input_names() == ["input_0", "input_1"]
    numbers = np.linspace(-1, 1, 18, dtype=np.float32).reshape(2, 9)
    ids = np.array([0, 1])
    want = np.asarray(loaded.predict({"input_0": numbers, "input_1": ids})["prediction"])
    assert want.shape == (2,)  # one prediction per example
    body = {"inputs": {"input_0": numbers.tolist(), "input_1": ids.tolist()}}
    answer = ask_the_champion(folder, "own-mixed-regressor", body)
    got = [a["prediction"] for a in answer["predictions"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_what_takes_one_input_tensor_is_refused_for_a_task_of_two(tmp_path):
    sets = ["--set", "model={arch: mlp}", "--set", "training.adversarial={epsilon: 0.1}"]
    folder, out = run_example(tmp_path, "mixed.yaml", *sets)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "model.arch: built-in architecture 'mlp' takes one input tensor; task " in out.stderr
    assert "training.adversarial: adversarial training perturbs one input tensor" in out.stderr
    assert not (folder / "podium-runs").exists()


@pytest.mark.parametrize("via", ["gcs", "client"])
def test_the_example_runs_on_a_cluster_whose_workers_are_sent_its_modules(
    tmp_path, monkeypatch, via
):
    # The trials run on a node that sees the team's folder empty, as a machine without the
    # driver's disk: they import its modules only because the job ships them (py_modules).
    # Over Ray Client, Tune's driver and the trials run on such a head.
    if via == "client" and not has_ray_client():
        pytest.skip("Ray Client needs grpcio: pip install 'ray[client]'")
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "false")  # see tests/integration/test_ray_client
    folder = tmp_path / "own-model"
    shutil.copytree(EXAMPLE, folder)
    nodes = RayNodes()
    try:
        if via == "gcs":
            nodes.start_node(head=True, name="head", num_cpus=0)
            nodes.start_node(name="elsewhere", num_cpus=2, hide=folder)
        else:
            nodes.start_node(head=True, name="head", num_cpus=2, hide=folder)
        out = podium(
            "run",
            "spec.yaml",
            "--address",
            nodes.address if via == "gcs" else nodes.client_address,
            "--set",
            "search.num_samples=2",
            "--set",
            "training.max_epochs=3",
            "--set",
            f"cluster.storage_path={tmp_path / 'shared'}",  # checkpoints: a disk both see
            cwd=folder,
            env={**_no_path(), **nodes.env()},
        )
    finally:
        nodes.cleanup()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2/2 done: 2 completed" in out.stderr
    assert "champion: models:/own-model-classifier@champion" in out.stdout


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("task", "no_such_team_module:iris", "cannot import module 'no_such_team_module'"),
        ("task", "mytasks:irises", "module 'mytasks'"),
        ("task", "os:sep", "'os:sep' is a str, not a function"),
        ("model.arch", "mytasks:iris", "cannot be called as def iris(input_shape, num_classes"),
    ],
)
def test_a_bad_plug_in_exits_2_quickly_naming_the_field_with_nothing_started(
    tmp_path, field, value, expected
):
    shutil.copy(EXAMPLE / "mytasks.py", tmp_path)
    started = time.monotonic()
    out = podium("run", "--set", f"{field}={value}", cwd=tmp_path, env=_no_path())
    assert out.returncode == 2, out.stderr
    assert time.monotonic() - started < 10
    line = next(line for line in out.stderr.splitlines() if line.strip().startswith(f"- {field}:"))
    assert expected in line and "Traceback" not in out.stderr
    assert not (tmp_path / "podium-runs").exists()  # no MLflow store, no Ray results


def test_a_regression_sweep_promotes_the_lowest_val_rmse(tmp_path):
    spec = parse_spec(
        {
            "name": "it-diabetes",
            "task": "diabetes",
            "model": {"arch": "mlp", "hidden": {"choice": [[16], [64, 32]]}},
            "optimizer": {"name": "adam", "lr": {"loguniform": [0.001, 0.03]}},
            "training": {"max_epochs": 6, "batch_size": 32},
            "search": {"num_samples": 3, "scheduler": "fifo", "metric": "val_rmse", "mode": "min"},
            "promotion": {"objectives": [{"metric": "val_rmse", "mode": "min"}]},
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = api.run(spec, tracking_uri=uri, verbosity=0, workdir=tmp_path)
    rmse = {r.trial_id: r.metrics["val_rmse"] for r in result.rows if r.status == "completed"}
    # In the target's units (disease progression; its spread is ~77): the model trains scaled.
    assert len(rmse) == 3 and all(30 < v < 120 for v in rmse.values())
    assert result.decision.winner.trial_id == min(rmse, key=rmse.get)
    run = MlflowClient(uri).get_run(result.decision.winner.run_id)
    assert {"test_rmse", "test_mae", "test_r2", "val_r2"} <= set(run.data.metrics)
    assert result.promotion is not None and result.promotion.promoted


def test_a_dataset_task_sweeps_through_its_data_loader(tmp_path):
    spec = parse_spec(
        {
            "name": "it-streamed",
            "task": "tests.workers.plugin_task:streamed",
            "model": {"arch": "mlp", "hidden": [16]},
            "optimizer": {"name": "adam", "lr": 0.02},
            "training": {"max_epochs": 3, "batch_size": 32},
            "search": {"num_samples": 2, "scheduler": "fifo"},
        }
    )
    result = api.run(
        spec, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", workdir=tmp_path, verbosity=0
    )
    assert [r.status for r in result.rows] == ["completed", "completed"]
    assert all(r.metrics["test_accuracy"] > 0.8 for r in result.rows)
    assert result.promotion is not None


def test_a_plug_in_bug_stops_an_8_trial_sweep_after_the_first_failures(tmp_path):
    spec = parse_spec(
        {
            "name": "it-broken",
            "model": {
                "arch": "tests.workers.plugin_task:broken_model",
                "width": {"choice": [8, 16]},
            },
            "training": {"max_epochs": 2},
            "search": {"num_samples": 8, "scheduler": "fifo"},
        }
    )
    started = time.monotonic()
    result = api.run(
        spec, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", workdir=tmp_path, verbosity=0
    )
    assert time.monotonic() - started < 60
    stopped = result.extra["stopped"]
    assert stopped.startswith("3 trials failed with the same error in their code")
    assert "mat1 and mat2 shapes cannot be multiplied" in stopped
    assert stopped.count("Traceback (most recent call last)") == 1
    failed = [r for r in result.rows if r.status == "failed"]
    # Two trials run at once: a fourth may fail in the step the sweep stops; the rest never run.
    assert 3 <= len(failed) <= 4 and len(result.rows) <= 5
    assert result.decision.winner is None


def test_the_hf_text_example_sweeps_is_quantized_and_served(tmp_path):
    """``examples/hf-text``: a team's Hugging Face model (a ``BertForSequenceClassification``
    built from a config, which returns a ``SequenceClassifierOutput``) on the text task, from
    its own folder: it trains, its own ``hidden`` (an int) is searched, int8 quantization
    measures it, and ``podium serve`` answers review strings with its champion (issues 27, 28)."""
    folder = tmp_path / "hf-text"
    shutil.copytree(EXAMPLE.parent / "hf-text", folder)
    out = podium("run", "spec.yaml", cwd=folder, env=_no_path())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 done: 2 completed" in out.stderr, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'podium-runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hf-text")
    trials = [
        r for r in client.search_runs([exp.experiment_id]) if "podium.trial_id" in r.data.tags
    ]
    assert sorted(r.data.params["model.hidden"] for r in trials) == ["16", "32"]
    for run in trials:
        assert run.data.metrics["test_accuracy"] > 0.5  # learnt something in one epoch
        assert run.data.metrics["size_ratio"] > 1  # measured int8 against fp32 ONNX
    reviews = ["A small movie with a big impact.", "Tedious, shallow and far too long."]
    answer = ask_the_champion(folder, "hf-text", {"inputs": reviews})
    assert len(answer["predictions"]) == 2  # the review strings in, one answer each
    assert {a["label"] for a in answer["predictions"]} <= {"rotten", "fresh"}
