"""``podium serve --replicas N``: the champion on N Ray Serve replicas of a local Ray, answering
as one ``podium serve`` does, each request by one replica; SIGTERM stops it all."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.fixtures_services import post_when_up
from tests.integration.test_cli import podium
from tests.pg import free_port

pytestmark = pytest.mark.slow


def test_two_replicas_share_the_requests_and_answer_as_the_champion(tmp_path):
    import mlflow.pyfunc

    out = podium(
        "run", "--set", "search.num_samples=1", "--set", "training.max_epochs=2", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'podium-runs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    from workers.tasks import load_task

    x = load_task("digits", 0).pipeline.raw_test[0][:3].numpy()  # raw pixels 0..16
    champion = mlflow.pyfunc.load_model("models:/digits-classifier@champion")
    want = list(champion.predict(x)["label"])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "models:/digits-classifier@champion"]
        + ["--replicas", "2", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        # Ray's proxy answers (404) before the app is routed: wait for the ready line.
        assert server.stdout is not None
        line = b""
        while b"Ray Serve replica(s)" not in line:
            line = server.stdout.readline()
            assert line, "podium serve --replicas exited before it was ready"
        first = post_when_up(url, {"inputs": x.tolist()}, server, timeout=180)
        assert [a["label"] for a in first["predictions"]] == want
        served_by: collections.Counter[str] = collections.Counter()
        wrong: list[str] = []

        def client() -> None:
            for _ in range(15):
                req = urllib.request.Request(
                    url,
                    json.dumps({"inputs": x.tolist()}).encode(),
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=30) as r:
                    served_by[r.headers["X-Served-By"]] += 1
                    got = [a["label"] for a in json.loads(r.read())["predictions"]]
                if got != want:
                    wrong.append(r.headers["X-Served-By"])

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not wrong, wrong
        assert sum(served_by.values()) == 90 and len(served_by) == 2, served_by
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=60)
    output = line.decode() + server.stdout.read().decode()
    assert rc == 0, output[-3000:]
    assert "on 2 Ray Serve replica(s)" in output and "Traceback" not in output, output[-3000:]
    deadline = time.monotonic() + 30
    while True:  # the port is free again: Ray's proxy went with the server
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthz", timeout=2)
        except OSError:
            break
        assert time.monotonic() < deadline, "something still answers on the port"
        time.sleep(0.5)
