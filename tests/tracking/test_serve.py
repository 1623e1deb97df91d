"""The scoring server: real models, a real MLflow registry (SQLite), the server as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tracking import keys
from tracking.errors import UntrustedModelError
from tracking.serving.http import Background, make_app
from tracking.serving.inputs import parse_inputs
from tracking.serving.scorers import ServeError, load_scorer
from workers.models import build_model
from workers.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]
ARCH = {"arch": "mlp", "hidden": [32], "batch_norm": False, "dropout": 0.0}


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained for real on digits, and its test split."""
    data = load_task("digits", 0)
    torch.manual_seed(0)
    model = build_model(ARCH, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):  # full batch: ~1 s on one core
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert acc > 0.85, f"the fixture model should have learnt digits, got {acc:.3f}"
    return model, data


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(
        model,
        (x[:2],),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
    )
    return path


def write_state_dict(model: torch.nn.Module, data, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / keys.STATE_DICT_ARTIFACT)
    (folder / keys.ARCH_ARTIFACT).write_text(
        json.dumps(
            {"model": ARCH, "input_shape": list(data.input_shape), "num_classes": data.num_classes}
        )
    )
    return folder


def _restore_mlflow_env(saved: dict[str, str | None]) -> None:
    """mlflow.set_*_uri export MLFLOW_*_URI; later tests' subprocesses must not inherit ours."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(scope="module")
def registry(tmp_path_factory, trained):
    """A SQLite MLflow store with three registered models: ONNX, state dict, pickle."""
    import mlflow
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    from mlflow import MlflowClient

    model, data = trained
    saved = {k: os.environ.get(k) for k in MLFLOW_ENV}
    tmp = tmp_path_factory.mktemp("serve-registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("serve", artifact_location=(tmp / "artifacts").as_uri())
    client = MlflowClient(uri, uri)
    with mlflow.start_run(experiment_id=exp) as run:
        onnx_file = export_onnx(model, data.x_test, tmp / keys.ONNX_ARTIFACT)
        mlflow.onnx.log_model(
            onnx.load(str(onnx_file)), name="onnx", registered_model_name="digits-onnx"
        )
        mlflow.log_artifacts(str(write_state_dict(model, data, tmp / "sd")), "weights")
        client.create_registered_model("digits-sd")
        client.create_model_version(
            "digits-sd", f"runs:/{run.info.run_id}/weights", run.info.run_id
        )
        mlflow.pytorch.log_model(
            model,
            name="pickled",
            serialization_format="pickle",
            registered_model_name="digits-pickle",
        )
    for name in ("digits-onnx", "digits-sd", "digits-pickle"):
        client.set_registered_model_alias(name, "champion", "1")
    yield uri
    _restore_mlflow_env(saved)


class Server:
    """The server as a subprocess, on a free port it announces on stdout."""

    def __init__(self, args: list[str], module: str) -> None:
        cmd = [sys.executable, "-m", module, *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()  # blocks until listening, or EOF if it failed
        if not line:
            self.proc.wait(30)
            raise RuntimeError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
        self.url = line.strip().rsplit(" at ", 1)[1]

    def post(self, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(self.url + "/invocations", body, {"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ``python -m tracking.serving.server`` serves ONNX; a state dict needs Podium's model builders,
# which the CLI (``podium serve``) passes in.
PODIUM_SERVE = "orchestrator.cli"


@pytest.fixture
def server(registry) -> Iterator:
    started: list[Server] = []

    def start(model: str, module: str = "tracking.serving.server") -> Server:
        args = [f"models:/{model}@champion", "--port", "0", "--tracking-uri", registry]
        s = Server(["serve", *args] if module == PODIUM_SERVE else args, module)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def expected_logits(trained, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    model, data = trained
    with torch.no_grad():
        return data.x_test[:n].numpy(), model(data.x_test[:n]).numpy()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, module", [("digits-onnx", "tracking.serving.server"), ("digits-sd", PODIUM_SERVE)]
)
def test_served_predictions_equal_the_models_own_outputs(server, trained, model, module):
    s = server(model, module)
    with urllib.request.urlopen(s.url + "/ping", timeout=10) as r:
        assert r.status == 200
    x, want = expected_logits(trained)
    # Flat rows (64 values), as a client without our shapes would send them.
    status, body = s.post(json.dumps({"inputs": x.reshape(len(x), -1).tolist()}).encode())
    assert status == 200
    got = np.asarray(body["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
    # MLflow's dataframe_split form answers the same.
    status, body = s.post(
        json.dumps(
            {
                "dataframe_split": {
                    "columns": [f"p{i}" for i in range(64)],
                    "data": x[:3].reshape(3, -1).tolist(),
                }
            }
        ).encode()
    )
    np.testing.assert_allclose(np.asarray(body["predictions"]), want[:3], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, trained):
    s = server("digits-onnx")
    status, body = s.post(b'{"inputs": [[1, 2, 3]]}')
    assert status == 400 and "64 values" in body["message"]
    status, body = s.post(b"{not json")
    assert status == 400
    status, body = s.post(b'{"rows": []}')
    assert status == 400 and "inputs" in body["message"]
    status, body = s.post(b'{"inputs": [[1]]}', ctype="text/plain")
    assert status == 415
    x, want = expected_logits(trained, 1)
    status, body = s.post(json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200 and np.allclose(body["predictions"], want, atol=1e-4)


@pytest.mark.slow
def test_a_pickled_model_is_refused_with_a_clear_message(registry, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracking.serving.server",
            "models:/digits-pickle@champion",
            "--port",
            "0",
            "--tracking-uri",
            registry,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 1, proc.stderr
    assert "refusing to load model.pth" in proc.stderr and "arbitrary code" in proc.stderr
    # The downloaded pickle went with its temporary folder.
    assert list(scratch.iterdir()) == []


def test_a_failed_runs_fetch_leaves_no_temporary_folder(registry, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(registry, registry)
    exp = client.get_experiment_by_name("serve").experiment_id
    run_id = client.search_runs([exp], max_results=1)[0].info.run_id
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    uri = f"runs:/{run_id}/no-such-folder"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve", uri, "--port", "0"]
        + ["--tracking-uri", registry],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 1 and uri in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(scratch.iterdir()) == []


def test_unknown_model_fails_with_the_uri(tmp_path):
    from tracking.serving.server import fetch_model

    with pytest.raises(ServeError, match="models:/nope@champion"):
        fetch_model("models:/nope@champion", f"sqlite:///{tmp_path / 'empty.db'}")


# --------------------------------------------------------------------------- in-process pieces


def test_pickle_files_alone_are_refused(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"\x80\x04K\x01.")  # never unpickled
    with pytest.raises(UntrustedModelError, match="model.pth"):
        load_scorer(tmp_path)
    (tmp_path / "model.pth").unlink()
    with pytest.raises(ServeError, match="no servable model"):
        load_scorer(tmp_path)


def test_state_dict_needs_a_builder_and_is_loaded_weights_only(tmp_path, trained):
    model, data = trained
    folder = write_state_dict(model, data, tmp_path / "sd")
    with pytest.raises(ServeError, match="build_model"):
        load_scorer(folder)
    scorer = load_scorer(folder, build_model)
    x, want = expected_logits(trained, 5)
    np.testing.assert_allclose(scorer.predict(x), want, rtol=1e-5, atol=1e-5)
    # A pickled object where the weights should be is rejected by weights_only loading.
    torch.save({"w": object.__new__(threading.Thread)}, folder / keys.STATE_DICT_ARTIFACT)
    with pytest.raises(ServeError, match="cannot rebuild"):
        load_scorer(folder, build_model)


def test_parse_inputs_shapes():
    assert parse_inputs({"inputs": [[1, 2, 3, 4]]}, (1, 2, 2)).shape == (1, 1, 2, 2)
    assert parse_inputs({"instances": [1, 2, 3, 4]}, (4,)).shape == (1, 4)
    assert parse_inputs({"dataframe_records": [{"a": 1, "b": 2}]}, None).shape == (1, 2)
    for bad in ({"inputs": [[1, 2], [3]]}, {"inputs": []}, {"inputs": "x"}, [1, 2]):
        with pytest.raises(ValueError):
            parse_inputs(bad, None)


def test_in_process_server_answers_concurrent_clients(tmp_path, trained):
    """Threads answer in parallel and every answer is the right one."""
    model, data = trained
    scorer = load_scorer(export_onnx(model, data.x_test, tmp_path / "m.onnx"))
    srv = Background(make_app(scorer))
    url = f"{srv.url}/invocations"
    x, want = expected_logits(trained, 100)
    errors: list[str] = []

    def client(i: int) -> None:
        req = urllib.request.Request(
            url,
            json.dumps({"inputs": x[i : i + 1].tolist()}).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                got = np.asarray(json.loads(r.read())["predictions"])
        except OSError as e:  # a reset connection is a failure, not noise
            errors.append(f"request {i}: {e!r}")
            return
        if not np.allclose(got, want[i : i + 1], atol=1e-4):
            errors.append(f"request {i} got another example's answer")

    # 100 clients connect at once: more than socketserver's default listen backlog of 5.
    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    srv.stop()
    assert errors == [] and time.perf_counter() - t0 < 30


def test_a_text_model_is_served_token_ids_as_json_numbers(tmp_path):
    """JSON has one kind of number: a model whose input is int64 token ids gets them as int64,
    from its ONNX file or from a state dict whose arch.json carries the task's extra facts."""
    from workers.recipes._export import export_onnx as export_example

    section = {"arch": "embedding_bag", "dim": 8}
    torch.manual_seed(0)
    model = build_model(section, (6,), 2, {"vocab_size": 20}).eval()
    ids = torch.tensor([[3, 5, 7, 0, 0, 0], [19, 1, 2, 4, 6, 8]])
    with torch.no_grad():
        want = model(ids).numpy()
    folder = tmp_path / "state"
    folder.mkdir()
    torch.save(model.state_dict(), folder / keys.STATE_DICT_ARTIFACT)
    arch = {"model": section, "input_shape": [6], "num_classes": 2, "input_dtype": "int64"}
    arch["extra"] = {"vocab_size": 20}
    (folder / keys.ARCH_ARTIFACT).write_text(json.dumps(arch))
    onnx_file = export_example(model, ids, tmp_path / "onnx" / keys.ONNX_ARTIFACT)
    for scorer in (load_scorer(onnx_file), load_scorer(folder, build_model)):
        srv = Background(make_app(scorer))
        req = urllib.request.Request(
            f"{srv.url}/invocations",
            json.dumps({"inputs": ids.tolist()}).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                got = np.asarray(json.loads(r.read())["predictions"])
        finally:
            srv.stop()
        np.testing.assert_allclose(got, want, atol=1e-5)


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_model_of_two_inputs_is_served_by_name_from_onnx_and_from_its_state_dict(tmp_path):
    from tests.workers.test_several_inputs import NumbersAndId, fit, task
    from workers import inputs
    from workers.recipes._export import export_onnx as export_inputs

    data = task()
    model, _ = fit(data, epochs=3)
    x = inputs.take(data.x_test, slice(0, 5))
    with torch.no_grad():
        want = inputs.forward(model, x).numpy()
    body = {"inputs": {"input_0": x[0].tolist(), "input_1": x[1].tolist()}}
    folder = tmp_path / "sd"
    folder.mkdir()
    torch.save(model.state_dict(), folder / keys.STATE_DICT_ARTIFACT)
    arch = {"model": {"arch": "t:two"}, "input_shape": [[3], []], "num_classes": 2}
    (folder / keys.ARCH_ARTIFACT).write_text(
        json.dumps({**arch, "input_dtype": ["float32", "int64"]})
    )
    scorers = [
        load_scorer(export_inputs(model, data.example_input(), tmp_path / "two.onnx")),
        load_scorer(folder, lambda *a: NumbersAndId()),
    ]
    for scorer in scorers:
        srv = Background(make_app(scorer))
        url = f"{srv.url}/invocations"
        try:
            status, answer = post(url, body)
            assert status == 200, answer
            np.testing.assert_allclose(answer["predictions"], want, rtol=1e-5, atol=1e-5)
            # Inputs by position, a missing one, or rows that disagree: 400s that say so.
            status, answer = post(url, {"inputs": x[0].tolist()})
            assert status == 400 and '"input_0": [...], "input_1": [...]' in answer["message"]
            status, answer = post(url, {"inputs": {"input_0": x[0].tolist()}})
            assert status == 400 and "missing ['input_1']" in answer["message"]
            uneven = {"inputs": {"input_0": x[0].tolist(), "input_1": x[1][:2].tolist()}}
            status, answer = post(url, uneven)
            assert status == 400 and "one row per example" in answer["message"]
        finally:
            srv.stop()
