"""The podium command: exit codes, messages, nothing started for a bad spec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_services import user_env

ROOT = Path(__file__).parents[2]


def podium(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    full_env = user_env(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_spec_exits_2_listing_every_problem_and_starts_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\nsearch: {scheduler: ashaa, num_samples: 0}\noptimizer: {name: adam, rho: 0.9}\n"
    )
    out = podium("run", str(spec), cwd=tmp_path)
    assert out.returncode == 2
    assert (
        "search.scheduler: 'ashaa' is not one of: asha, fifo, hyperband, median, pbt" in out.stderr
    )
    assert "search.num_samples: must be a positive integer, got 0" in out.stderr
    assert "optimizer.rho" in out.stderr
    assert not (tmp_path / "podium-runs").exists()  # no MLflow store, no Ray results


def test_bad_override_and_usage_exit_2(tmp_path):
    out = podium("run", "--set", "search.num_samples", cwd=tmp_path)
    assert out.returncode == 2 and "PATH=VALUE" in out.stderr
    out = podium("frobnicate", cwd=tmp_path)
    assert out.returncode == 2
    assert podium("validate", str(tmp_path / "none.yaml"), cwd=tmp_path).returncode == 2


def test_validate_prints_the_resolved_spec(tmp_path):
    out = podium(
        "validate",
        str(ROOT / "examples" / "digits.yaml"),
        "--set",
        "search.num_samples=2",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "valid (spec hash" in out.stdout and "num_samples: 2" in out.stdout


def test_leaderboard_of_unknown_experiment_exits_2(tmp_path):
    out = podium(
        "leaderboard", "nope", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path
    )
    assert out.returncode == 2 and "no experiment named 'nope'" in out.stderr


@pytest.mark.slow
def test_run_default_spec_reduced_then_leaderboard(tmp_path):
    out = podium(
        "run",
        "--set",
        "search.num_samples=2",
        "--set",
        "training.max_epochs=2",
        "--set",
        "search.scheduler=fifo",
        "--set",
        "promotion.model_name=cli-model",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "champion: models:/cli-model@champion = version 1" in out.stdout
    assert "2/2 done: 2 completed" in out.stderr  # the progress view counts the last trial too
    assert (tmp_path / "podium-runs" / "mlflow.db").exists()  # the embedded default store
    board = podium("leaderboard", "digits-default", cwd=tmp_path)
    assert board.returncode == 0 and board.stdout.count("completed") == 2


@pytest.mark.slow
def test_ui_serves_the_local_store(tmp_path):
    import socket
    import time
    import urllib.request

    from orchestrator import api

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = api.ui(f"sqlite:///{tmp_path / 'm.db'}", port=port)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, "mlflow ui exited"
                assert time.monotonic() < deadline, "mlflow ui did not answer in 120 s"
                time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_name_that_is_no_experiment_or_model_exits_2_and_creates_nothing(tmp_path):
    for command in (["leaderboard", "NOPE"], ["promote", "NOPE"]):
        out = podium(*command, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "no experiment named 'NOPE' in sqlite:///" in out.stderr
        assert "invalid experiment spec" not in out.stderr and "Traceback" not in out.stderr
    out = podium("rollback", "a/b", cwd=tmp_path)
    assert out.returncode == 2 and "model name 'a/b'" in out.stderr and "lock" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no folder
