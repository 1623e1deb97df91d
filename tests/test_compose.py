"""The team stack's docker-compose.yml, checked by docker-compose itself (no Docker engine needed).

``docker-compose config`` parses the file, interpolates the .env values and resolves anchors and
defaults; the checks then read the resolved file, which is what the engine would run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose is not installed (make install adds Debian's docker-compose package)",
)


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        COMPOSE,
        "--project-directory",
        str(ROOT),
        "-f",
        str(ROOT / "docker-compose.yml"),
        "--env-file",
        str(env_file),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """The example secrets, copied where a test may change them (the real .env stays untouched)."""
    path = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", path)
    return path


@pytest.fixture
def resolved(env_file: Path) -> dict:
    proc = compose(env_file, "config")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_file_is_valid_with_the_example_env(env_file):
    proc = compose(env_file, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


SECRETS = [
    "POSTGRES_PASSWORD",
    "RAY_AUTH_TOKEN",
    "MLFLOW_ADMIN_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "MLFLOW_SECRET_KEY",
    "TUNE_S3_SECRET_KEY",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_missing_secret_stops_compose_and_is_named(env_file, secret):
    lines = [ln for ln in env_file.read_text().splitlines() if not ln.startswith(f"{secret}=")]
    env_file.write_text("\n".join(lines) + "\n")
    proc = compose(env_file, "config", "-q")
    assert proc.returncode != 0
    assert secret in proc.stderr


def test_every_published_port_is_on_loopback(resolved):
    published = [
        (name, port) for name, svc in resolved["services"].items() for port in svc.get("ports", [])
    ]
    assert {name for name, _ in published} == {"minio", "mlflow", "ray-head"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    # Workers publish nothing, which is what lets them scale.
    assert "ports" not in resolved["services"]["ray-worker"]


def test_mlflow_server_has_auth_postgres_minio_and_no_job_workers(resolved):
    mlflow = resolved["services"]["mlflow"]
    env = mlflow["environment"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "change-me-mlflow-admin"  # from the .env file
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # The command is a script of ours; its flags are checked where they are written.
    script = (ROOT / "docker" / "mlflow-server.sh").read_text()
    assert mlflow["command"][-1].endswith("docker/mlflow-server.sh")
    for flag in (
        "--app-name basic-auth",
        "--backend-store-uri",
        "--serve-artifacts",
        "s3://${MLFLOW_BUCKET",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
    ):
        assert flag in script


def test_buckets_and_the_tune_user_are_created_on_start(resolved):
    init = resolved["services"]["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    assert init["environment"]["TUNE_BUCKET"] == "podium-tune"
    script = (ROOT / "docker" / "minio-init.sh").read_text()
    assert 'mc mb --ignore-existing "podium/$MLFLOW_BUCKET"' in script
    assert 'mc mb --ignore-existing "podium/$TUNE_BUCKET"' in script
    # The Ray nodes' key is a user allowed Tune's bucket only, never MinIO's root.
    assert 'mc admin user add podium "$TUNE_S3_ACCESS_KEY" "$TUNE_S3_SECRET_KEY"' in script
    assert '"arn:aws:s3:::$TUNE_BUCKET/*"' in script and "$MLFLOW_BUCKET/*" not in script


def test_ray_nodes_use_the_project_image_token_auth_and_the_tune_bucket(resolved):
    services = resolved["services"]
    minio_init = services["minio-init"]["environment"]
    for name in ("ray-head", "ray-worker", "ray-gpu-worker"):
        svc = services[name]
        env = svc["environment"]
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert Path(svc["build"]["context"]) == ROOT
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == "change-me-ray-token"
        # Tune's storage is MinIO's bucket, reached with the bucket's own user: no volume is
        # shared between Ray nodes (a trial restarted elsewhere reads its checkpoint back).
        assert env["PODIUM_STORAGE_PATH"] == "s3://podium-tune/runs"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == minio_init["TUNE_S3_ACCESS_KEY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_init["TUNE_S3_SECRET_KEY"]
        assert env["AWS_ACCESS_KEY_ID"] != services["minio"]["environment"]["MINIO_ROOT_USER"]
        assert not svc.get("volumes"), f"{name} mounts {svc.get('volumes')}"
    assert "podium-runs" not in resolved.get("volumes", {})
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    gpu = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_dockerfile_installs_the_pinned_project_and_ignores_secrets():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-c constraints.txt" in dockerfile and "grep '^torch=='" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".env", ".venv", ".git"):
        assert path in ignored
    # Every directory the Dockerfile copies exists, so `docker build` cannot fail on a COPY.
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
