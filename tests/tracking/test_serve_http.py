"""podium serve's HTTP layer: the whole scoring protocol matched by column name, bad input as
400s that name the problem, and a server that stalled clients, a flood and SIGTERM do not
break. Real models, real sockets, the server as a subprocess where its threads are counted."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tracking.serving.http import Background, make_app, signature_columns
from tracking.serving.scorers import load_scorer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """A breast_cancer MLP saved as an MLflow ONNX model whose signature names its 30 columns,
    as Podium registers a tabular champion."""
    import mlflow.onnx
    import onnx
    import pandas as pd
    from mlflow.models import infer_signature

    from workers.models import build_model
    from workers.recipes._export import export_onnx
    from workers.tasks import load_task

    data = load_task("breast_cancer", 0)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [16]}, data.input_shape, data.num_classes)
    tmp = tmp_path_factory.mktemp("tabular")
    path = export_onnx(model.eval(), data.x_test[:4], tmp / "model.onnx")
    frame = pd.DataFrame(data.x_test[:4].numpy(), columns=list(data.feature_names))
    with torch.no_grad():
        out = model(data.x_test[:4]).numpy()
    folder = tmp / "mlflow-model"
    mlflow.onnx.save_model(onnx.load(str(path)), str(folder), signature=infer_signature(frame, out))
    x = data.x_test[:3].numpy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return folder, list(data.feature_names), x, want


@pytest.fixture(scope="module")
def server(tabular):
    folder, *_ = tabular
    bg = Background(make_app(load_scorer(folder), signature_columns(folder)))
    yield bg
    bg.stop()


def post(url: str, body: bytes | str, ctype: str = "application/json") -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/invocations", body, {"Content-Type": ctype})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def post_json(url: str, payload: object) -> tuple[int, dict]:
    return post(url, json.dumps(payload))


def test_the_signature_names_the_columns(tabular):
    folder, names, *_ = tabular
    assert signature_columns(folder) == names
    assert signature_columns(folder.parent) == names  # found below a download folder too


def test_every_form_of_the_protocol_gives_the_same_answer(server, tabular):
    _, names, x, want = tabular
    records = [dict(zip(names, map(float, row), strict=True)) for row in x]
    shuffled = [dict(reversed(list(r.items()))) for r in records]  # keys in another order
    header = list(reversed(names))
    csv_body = (
        ",".join(header) + "\n" + "\n".join(",".join(repr(r[c]) for c in header) for r in records)
    )
    bodies = {
        "inputs": json.dumps({"inputs": x.tolist()}),
        "instances": json.dumps({"instances": x.tolist()}),
        "records": json.dumps({"dataframe_records": records}),
        "records, keys reordered": json.dumps({"dataframe_records": shuffled}),
        "instances as records": json.dumps({"instances": shuffled}),
        "split, columns reordered": json.dumps(
            {
                "dataframe_split": {
                    "columns": header,
                    "data": [[r[c] for c in header] for r in records],
                }
            }
        ),
        "with params": json.dumps({"inputs": x.tolist(), "params": {"temperature": 1}}),
    }
    for what, body in bodies.items():
        status, answer = post(server.url, body)
        assert status == 200, (what, answer)
        np.testing.assert_allclose(answer["predictions"], want, rtol=1e-5, atol=1e-5, err_msg=what)
    status, answer = post(server.url, csv_body, "text/csv")
    assert status == 200, answer
    np.testing.assert_allclose(answer["predictions"], want, rtol=1e-5, atol=1e-5)


def test_bad_requests_are_400s_that_name_the_problem(server, tabular):
    _, names, x, _ = tabular
    row = dict(zip(names, map(float, x[0]), strict=True))
    missing = {k: v for k, v in row.items() if k != "mean radius"}
    cases = {
        "missing ['mean radius']": {"dataframe_records": [missing]},
        "unknown ['colour']": {"dataframe_records": [{**row, "colour": 1.0}]},
        "non-finite value (nan) in row 0": {"inputs": [[float("nan")] + x[0].tolist()[1:]]},
    }
    for expected, payload in cases.items():
        status, answer = post_json(server.url, payload)
        assert status == 400 and expected in answer["message"], (expected, answer)
    # 1e400 is infinity once parsed, and 'NaN' is what some clients write.
    huge = '{"inputs": [[1e400' + ", 0.0" * 29 + "]]}"
    for body in (huge, '{"inputs": [[NaN' + ", 0.0" * 29 + "]]}"):
        status, answer = post(server.url, body)
        assert status == 400 and "non-finite" in answer["message"], answer
    status, answer = post(server.url, "a,b\n1,x", "text/csv")
    assert status == 400 and "CSV values must be numbers" in answer["message"]
    status, answer = post(server.url, "x", "text/plain")
    assert status == 415


def test_a_body_nested_thousands_deep_is_a_400(server):
    """Python's JSON parser stops at its recursion limit: that is the client's error too."""
    status, answer = post(server.url, '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}")
    assert status == 400 and "nested too deeply" in answer["message"], answer


def test_a_body_over_the_limit_gets_its_413_not_a_reset(tabular):
    """The client sends the whole body before it reads an answer, as most HTTP libraries do."""
    folder, *_ = tabular
    bg = Background(make_app(load_scorer(folder), signature_columns(folder), max_body=1 << 20))
    try:
        chunk = b" " * (1 << 20)
        size = 64 * len(chunk)  # 64 MB against a 1 MB limit
        host, port = bg.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        for _ in range(64):
            conn.send(chunk)
        r = conn.getresponse()
        assert r.status == 413 and "exceeds 1048576" in json.loads(r.read())["message"]
        conn.close()
    finally:
        bg.stop()


class SlowScorer:
    """A scorer that takes ``delay`` seconds: predictions pile up."""

    input_shape = (2,)
    input_names = ["input"]
    input_shapes = [(2,)]
    description = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return x


def test_beyond_the_in_flight_bound_requests_get_503_at_once():
    bg = Background(make_app(SlowScorer(1.0), max_in_flight=2))
    try:
        answers: list[tuple[int, float]] = []

        def client() -> None:
            t0 = time.monotonic()
            status, _ = post_json(bg.url, {"inputs": [[1, 2]]})
            answers.append((status, time.monotonic() - t0))

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(s for s, _ in answers)
        assert statuses.count(200) >= 2 and 503 in statuses, statuses
        assert all(dt < 0.5 for s, dt in answers if s == 503)  # refused, not queued
    finally:
        bg.stop()


def test_a_body_that_never_arrives_is_answered_408():
    bg = Background(make_app(SlowScorer(0.0), read_timeout=0.5))
    try:
        host, port = bg.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"inputs"'
            )
            answer = s.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive" in answer
    finally:
        bg.stop()


def serve_subprocess(folder: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracking.serving.server", str(folder), "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"server exited {proc.wait(30)}: {proc.stderr.read()}")
    return proc, line.strip().rsplit(" at ", 1)[1]


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
def test_two_thousand_stalled_clients_do_not_stop_a_normal_request(tabular, record_property):
    import resource

    folder, _, x, want = tabular
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4500:
        pytest.skip(f"needs 4,500 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4500), hard))
    proc, url = serve_subprocess(folder)
    host, port = url.removeprefix("http://").split(":")
    stalled: list[socket.socket] = []
    try:
        assert post_json(url, {"inputs": x.tolist()})[0] == 200
        baseline = threads_of(proc.pid)
        rss_before = rss_mb(proc.pid)
        for i in range(2000):
            s = socket.create_connection((host, int(port)), timeout=10)
            # Half of them stall inside their headers, half after them, before the body.
            head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            s.sendall(head + (b"Content-Length: 50\r\n\r\n" if i % 2 else b""))
            stalled.append(s)
        time.sleep(1.0)
        t0 = time.monotonic()
        status, answer = post_json(url, {"inputs": x.tolist()})
        elapsed = time.monotonic() - t0
        assert status == 200 and elapsed < 1.0, (status, elapsed)
        np.testing.assert_allclose(answer["predictions"], want, rtol=1e-5, atol=1e-5)
        during, rss_during = threads_of(proc.pid), rss_mb(proc.pid)
        record_property(
            "stalled", {"threads": [baseline, during], "rss_mb": [rss_before, rss_during]}
        )
        assert during <= baseline + 8, (baseline, during)  # no thread per connection
        assert rss_during - rss_before < 100, (rss_before, rss_during)
    finally:
        for s in stalled:
            s.close()
    time.sleep(1.0)
    try:
        assert post_json(url, {"inputs": x.tolist()})[0] == 200
        assert threads_of(proc.pid) <= baseline + 8
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()


def test_sigterm_stops_the_server_and_frees_its_port(tabular):
    folder, _, x, _ = tabular
    proc, url = serve_subprocess(folder)
    host, port = url.removeprefix("http://").split(":")
    assert post_json(url, {"inputs": x.tolist()})[0] == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stderr.read()
    with socket.socket() as s:
        s.bind((host, int(port)))  # nothing is left listening there
