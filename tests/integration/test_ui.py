"""``podium ui``: the MLflow UI on the local store, stopped cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures_services import user_env
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


def start_ui(folder: Path, port: int) -> subprocess.Popen:
    """``podium ui --port PORT`` in ``folder``, its output (text) on a pipe."""
    env = user_env()
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_stops_podium_ui_and_nothing_is_left_on_its_port(tmp_path: Path):
    port = free_port()
    ui = start_ui(tmp_path, port)
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


# --------------------------------------------------------------------------- rendered pages

CHROMIUM = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking "
    "--disable-component-update --disable-sync --no-first-run --virtual-time-budget=15000"
).split()
# Where the rendered pages' screenshots are kept for a reader of the test run.
ARTIFACTS = Path(
    os.environ.get("PODIUM_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


def render(url: str, name: str, profile: Path) -> str:
    """The page at ``url`` as headless Chromium renders it (its JavaScript run): the visible
    text, tags stripped; a screenshot is kept as ``test-artifacts/ui/<name>.png``."""
    import html
    import re
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is missing: make install adds Debian's chromium"
    shots = ARTIFACTS / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    args = [exe, *CHROMIUM, f"--user-data-dir={profile}"]
    subprocess.run(
        [*args, "--window-size=1400,900", f"--screenshot={shots / name}.png", url],
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    page = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom.stdout, flags=re.S)
    (shots / f"{name}.html").write_text(dom.stdout)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page))), dom.stdout


def test_the_ui_shows_a_sweep_in_the_training_view_and_the_champion_on_its_model(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.integration.test_cli import podium
    from tracking import keys

    quick = ["--set", "search.num_samples=2", "--set", "training.max_epochs=2"]
    out = podium("run", *quick, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'podium-runs' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("digits-default")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_SWEEP)
    trials = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_TRIAL]

    port = free_port()
    ui = start_ui(tmp_path, port)
    try:
        lines = [ui.stdout.readline() for _ in range(2)]
        link = lines[1].split(": ", 1)[1].strip()  # the sweep's experiment, as podium ui prints it
        assert lines[1].strip().startswith("digits-default: ") and "workflowType=" in link, lines
        deadline = time.monotonic() + 120
        while not _serving(port):
            assert ui.poll() is None and time.monotonic() < deadline, "podium ui did not start"
            time.sleep(0.5)
        text, dom = render(link, "experiment", tmp_path / "profile")
        # The training view: runs and the registry in the sidebar, not traces and judges.
        assert "Model registry" in text and "Runs" in text, text[:2000]
        for genai in ("Detect Issues", "Judges", "Sessions"):
            assert genai not in text, text[:2000]
        # The sweep's run is the one top-level row; its trials fold under it.
        rows = set(re.findall(r'row-id="([0-9a-f]{32})"', dom))
        assert rows == {parent.info.run_id}, rows
        assert f"{1 + len(trials)} matching runs" in text
        assert "runnamecellrenderer" in dom.split(f'row-id="{parent.info.run_id}"', 2)[1]

        # The sweep's reports are its run's artifacts, listed where the UI previews them.
        exp = experiment.experiment_id
        artifacts = f"http://127.0.0.1:{port}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts?workflowType=machine_learning"
        text, _ = render(artifacts, "sweep-artifacts", tmp_path / "profile")
        for report in (keys.LEADERBOARD_ARTIFACT, keys.CURVES_PLOT_ARTIFACT, keys.SPEC_ARTIFACT):
            assert report in text, (report, text[:3000])

        model = f"http://127.0.0.1:{port}/#/models/digits-classifier?workflowType=machine_learning"
        text, _ = render(model, "model", tmp_path / "profile")
        assert "digits-classifier" in text and "@ champion" in text, text[:3000]
        assert "podium.measured_artifact" in text  # the version's card
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
