"""The team stack's topology as real processes: what docker-compose.yml runs, without Docker.

PostgreSQL from the OS packages; ``docker/mlflow-server.sh`` (the compose service's own script)
serving MLflow on it with basic authentication; an S3 server (moto's, standing in for MinIO) that
holds Tune's state and checkpoints; a Ray head and a Ray worker from ``ray start`` with token
authentication and the bucket's variables, all on 127.0.0.1. A ``podium run`` joins them with
``--address`` and ``--tracking-uri``, its storage the bucket through ``PODIUM_STORAGE_PATH`` as in
docker-compose.yml; the test then reads PostgreSQL directly to find the runs and the champion.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fixtures_services import RayNodes, S3Server, write_cluster_spec
from tests.pg import PostgresServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_postgres_helper_starts_a_real_server_and_stops_it():
    with PostgresServer() as pg:
        uri = pg.create_database("probe")
        assert uri.startswith(
            f"postgresql+psycopg2://podium:{pg.password}@127.0.0.1:{pg.port}/probe"
        )
        pg.query("probe", "CREATE TABLE t (x int)")
        assert pg.query("probe", "SELECT count(*) FROM t") == [(0,)]
        port = pg.port
    import psycopg2

    with pytest.raises(psycopg2.OperationalError):  # stopped: nothing listens any more
        psycopg2.connect(
            host="127.0.0.1", port=port, user="podium", dbname="probe", connect_timeout=2
        )


def start_mlflow_from_compose_script(
    pg: PostgresServer, home: Path
) -> tuple[subprocess.Popen, dict]:
    """Run docker/mlflow-server.sh as the compose service does, pointed at the local PostgreSQL."""
    pg.create_database("mlflow")
    pg.create_database("mlflow_auth")
    port = free_port()
    admin_password = "team-stack-" + os.urandom(6).hex()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "POSTGRES_USER": "podium",
        "POSTGRES_PASSWORD": pg.password,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(pg.port),
        "MLFLOW_AUTH_ADMIN_USERNAME": "podium-admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
        "MLFLOW_BIND": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_ARTIFACTS_DESTINATION": str(home / "artifacts"),
        "TMPDIR": str(home),
    }
    proc = subprocess.Popen(
        ["sh", str(ROOT / "docker" / "mlflow-server.sh")],
        env=env,
        cwd=home,
        stdout=open(home / "mlflow.log", "wb"),
        stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "mlflow.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    client_env = {
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_TRACKING_USERNAME": "podium-admin",
        "MLFLOW_TRACKING_PASSWORD": admin_password,
    }
    return proc, client_env


@pytest.fixture
def team_stack(tmp_path):
    """PostgreSQL + authenticated mlflow server + an S3 server + a 2-node token-auth Ray whose
    nodes have the bucket's variables; all stopped after."""
    import signal

    from tests.pg import find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (make install adds it)")
    pg = PostgresServer().start()
    s3 = S3Server().start()
    storage = {**s3.env(), "PODIUM_STORAGE_PATH": f"s3://{s3.bucket()}/runs"}
    ray_nodes = RayNodes(env=storage)
    mlflow_proc = None
    try:
        mlflow_proc, client_env = start_mlflow_from_compose_script(pg, tmp_path)
        ray_nodes.start_node(head=True, name="head", num_cpus=1)
        ray_nodes.start_node(name="worker-1", num_cpus=1)
        yield pg, client_env, ray_nodes, (s3, storage)
    finally:
        if mlflow_proc is not None and mlflow_proc.poll() is None:
            os.killpg(mlflow_proc.pid, signal.SIGTERM)
            mlflow_proc.wait(timeout=30)
        ray_nodes.cleanup()
        s3.cleanup()
        pg.cleanup()


@pytest.mark.slow
@pytest.mark.postgres
def test_sweep_through_the_team_stack_lands_in_postgres(team_stack, tmp_path):
    pg, client_env, ray_nodes, (s3, storage) = team_stack
    url = client_env["MLFLOW_TRACKING_URI"]
    # Authentication is really on: no credentials, no access.
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert denied.value.code == 401

    spec = write_cluster_spec(tmp_path, "team-stack", model_name="team-model")
    raw = yaml.safe_load(spec.read_text())
    del raw["cluster"]  # its storage comes from the nodes' PODIUM_STORAGE_PATH, as in compose
    spec.write_text(yaml.safe_dump(raw))
    # The driver has the Ray token, the MLflow credentials and the bucket's; no disk is shared.
    env = {**os.environ, **client_env, **ray_nodes.env(), **storage}
    env.pop("MLFLOW_TRACKING_URI")  # the flag must be what routes the runs
    env.pop("MLFLOW_REGISTRY_URI", None)  # as an earlier in-process sweep may leave it
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "podium"),
            "run",
            str(spec),
            "--address",
            ray_nodes.address,
            "--tracking-uri",
            url,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # MLflow's console lines about the server's runs stay out of the progress view.
    assert "View run" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert "Waiting up to" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    # Tune's state, both trials' checkpoints and the ledger are in the bucket, nothing local.
    bucket = storage["PODIUM_STORAGE_PATH"].split("/")[2]
    stored = list(s3.objects(bucket, "runs/"))
    assert any("/experiment_state-" in k for k in stored), stored
    assert len({k.split("/")[2] for k in stored if "/checkpoint_" in k}) == 2, stored
    assert len([k for k in stored if "/podium-trials/" in k]) == 2, stored
    assert not (tmp_path / "podium-runs" / "ray_results").exists()

    # Straight from PostgreSQL: one parent run, two trial runs with their metrics, the champion.
    db = "mlflow"
    [(exp_id,)] = pg.query(
        db, "SELECT experiment_id FROM experiments WHERE name = %s", ("team-stack",)
    )
    roles = dict(
        pg.query(
            db,
            "SELECT value, count(*) FROM tags t JOIN runs r ON "
            "r.run_uuid = t.run_uuid WHERE t.key = 'podium.role' AND "
            "r.experiment_id = %s GROUP BY value",
            (exp_id,),
        )
    )
    assert roles == {"sweep": 1, "trial": 2}
    steps = pg.query(
        db,
        "SELECT m.run_uuid, count(*) FROM metrics m JOIN tags t ON t.run_uuid = "
        "m.run_uuid WHERE t.key = 'podium.role' AND t.value = 'trial' AND "
        "m.key = 'val_accuracy' GROUP BY m.run_uuid",
    )
    assert sorted(n for _, n in steps) == [2, 2]
    nodes = {v for (v,) in pg.query(db, "SELECT value FROM tags WHERE key = 'podium.node'")}
    assert nodes and all(v.rsplit("/", 1)[-1] in {"head", "worker-1"} for v in nodes)
    [(alias_run,)] = pg.query(
        db,
        "SELECT mv.run_id FROM registered_model_aliases a JOIN model_versions mv "
        "ON mv.name = a.name AND mv.version = a.version WHERE a.name = %s AND a.alias = %s",
        ("team-model", "champion"),
    )
    assert alias_run in {run for run, _ in steps}
    # The user store lives in its own database, as in docker-compose.yml.
    assert pg.query("mlflow_auth", "SELECT username FROM users") == [("podium-admin",)]
