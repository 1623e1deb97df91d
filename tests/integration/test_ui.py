"""``podium ui``: the MLflow UI on the local store, stopped cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pg import free_port

pytestmark = pytest.mark.slow


def _serving(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        return True
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_podium_ui_and_nothing_is_left_on_its_port(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ui = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not _serving(port):
            assert ui.poll() is None and time.monotonic() < deadline, ui.stdout.read()
            time.sleep(0.5)
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _listening(port):
            assert time.monotonic() < deadline, f"something still listens on {port}"
            time.sleep(0.2)
    finally:
        if ui.poll() is None:
            ui.kill()
