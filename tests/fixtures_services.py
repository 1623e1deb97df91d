"""Real services for tests: PostgreSQL and ``mlflow server`` as processes on 127.0.0.1.

Registered from ``tests/conftest.py`` through ``pytest_plugins``. Nothing here is mocked: the
fixtures start the real programs and stop them afterwards. ``MlflowServer`` can be stopped and
restarted on the same port, which the tracking-outage fault test needs.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, find_bin_dir, free_port

# mlflow.set_tracking_uri sets the variable, so an earlier in-process sweep of the suite leaves
# these in os.environ; a subprocess that must find its own folder's store runs without them.
MLFLOW_URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def user_env(*extra: dict[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment as a user's shell has it (no MLflow URIs, nor ``drop``),
    with ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_URIS + drop}
    for more in extra:
        env.update(more)
    return env


ADMIN_USER = "podium-admin"


class MlflowServer:
    """``mlflow server`` in its own process group, on a fixed loopback port across restarts.

    Args:
        backend_uri: the tracking store (``postgresql://...`` or ``sqlite:///...``).
        artifacts_dir: where ``--serve-artifacts`` keeps artifacts.
        auth_db_uri: turn basic authentication on (``--app-name basic-auth``) with its user
            store here; clients then need MLFLOW_TRACKING_USERNAME/PASSWORD (see ``client_env``).
    """

    def __init__(
        self, backend_uri: str, artifacts_dir: Path, auth_db_uri: str | None = None
    ) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = artifacts_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_db_uri = auth_db_uri
        self.password = secrets.token_urlsafe(16) if auth_db_uri else None
        self.secret_key = secrets.token_hex(16)  # the same across restarts, as in production
        self.home = Path(tempfile.mkdtemp(prefix="podium-mlflow-"))
        self.proc: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if self.auth_db_uri:
            ini = self.home / "auth.ini"
            ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {self.auth_db_uri}\nadmin_username = {ADMIN_USER}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env.update(
                MLFLOW_AUTH_CONFIG_PATH=str(ini),
                MLFLOW_AUTH_ADMIN_PASSWORD=self.password or "",
                MLFLOW_FLASK_SERVER_SECRET_KEY=self.secret_key,
            )
        return env

    def client_env(self) -> dict[str, str]:
        """Environment a client (``podium run``, MlflowClient) needs to talk to this server."""
        env = {"MLFLOW_TRACKING_URI": self.url}
        if self.password:
            env.update(MLFLOW_TRACKING_USERNAME=ADMIN_USER, MLFLOW_TRACKING_PASSWORD=self.password)
        return env

    def start(self, timeout: float = 120) -> MlflowServer:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--serve-artifacts",
        ]
        if self.auth_db_uri:
            cmd += ["--app-name", "basic-auth"]
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen(
            cmd,
            env=self._env(),
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the server and its workers (the whole process group we started)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's whole process group: SIGSTOP freezes it (connections
        are accepted by the kernel and never answered), SIGCONT thaws it, SIGKILL ends it."""
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a frozen server cannot stop itself
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


class RayNodes:
    """A Ray cluster of real ``ray start`` processes on 127.0.0.1, with token authentication.

    Each node is its own process group (``ray start --block`` and everything it spawns), so
    :meth:`stop` ends exactly the processes this object started, never another Ray on the host.
    ``env()`` is what a driver needs to join: ``RAY_ADDRESS``-free, the token in the environment.
    With ``ray[client]`` installed the head also serves Ray Client at ``client_address``, on a
    port of its own: ``ray start``'s default (10001) would make two test clusters collide, and a
    head whose client server cannot bind its port shuts itself down.
    """

    def __init__(
        self, token: str | None = None, ip: str = "127.0.0.1", env: dict[str, str] | None = None
    ) -> None:
        self.token = token or secrets.token_hex(16)
        self.ip = ip  # the head's address (a veth end for a node in a network namespace)
        self.extra_env = dict(env or {})  # every node's, e.g. object storage's endpoint and keys
        self.port = free_port()
        self.address = f"{ip}:{self.port}"
        self.client_port = free_port()
        self.client_address = f"ray://127.0.0.1:{self.client_port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="podium-ray-"))
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start_node(
        self,
        head: bool = False,
        name: str = "node",
        num_cpus: int = 1,
        num_gpus: int = 0,
        resources: dict[str, float] | None = None,
        timeout: float = 120,
        hide: Path | None = None,
        netns: NetNamespace | None = None,
    ) -> subprocess.Popen:
        """Start one node; ``hide``: a folder this node's processes see empty (a tmpfs mounted
        over it in a mount namespace of their own), as a machine without the driver's disk;
        ``netns``: the node runs in that network namespace and reaches the head across its veth
        link, as a second machine would."""
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [
            str(ray_bin),
            "start",
            "--block",
            f"--node-ip-address={netns.inner_ip if netns else self.ip}",
            f"--node-name={name}",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false"]
            if has_ray_client():
                cmd.append(f"--ray-client-server-port={self.client_port}")
        else:
            cmd += [f"--address={self.address}"]
        if resources:
            import json

            cmd.append(f"--resources={json.dumps(resources)}")
        if hide is not None:
            mount = f'mount -t tmpfs tmpfs {shlex.quote(str(hide))} && exec "$@"'
            cmd = ["unshare", "--mount", "sh", "-c", mount, "sh", *cmd]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns.name, *cmd]
        log_path = self.temp_dir / f"{name}.log"
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **self.extra_env, **self.env()},
            stdout=open(log_path, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        return proc

    def worker_pids(self, title: str = "ray::ImplicitFunc") -> list[int]:
        """PIDs of Ray worker processes of *this* cluster whose title starts with ``title``
        (Tune's function trainables run in ``ray::ImplicitFunc`` actors)."""
        groups = {p.pid for p in self.procs if p.poll() is None}
        pids = []
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                pgid = os.getpgid(int(proc_dir.name))
                cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ProcessLookupError):
                continue
            if pgid in groups and cmdline.startswith(title):
                pids.append(int(proc_dir.name))
        return pids

    def stop(self) -> None:
        """Kill every process group this cluster started (a throwaway cluster needs no drain)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        self.procs.clear()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class NetNamespace:
    """A network namespace joined to this one by a veth pair: processes in it reach this host
    only at ``outer_ip``, across a real (virtual) link, and this host reaches them at
    ``inner_ip``. Needs root and ``ip`` (iproute2); :meth:`unavailable` says why not."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"podium-{tag}"
        self._outer, self._inner = f"pv{tag}o", f"pv{tag}i"  # interface names: 15 chars at most
        net = 200 + secrets.randbelow(50)
        subnet = f"10.{net}.{secrets.randbelow(250)}"
        self.outer_ip, self.inner_ip = f"{subnet}.1", f"{subnet}.2"

    @staticmethod
    def unavailable() -> str | None:
        if shutil.which("ip") is None:
            return "iproute2's ip is not installed"
        if os.geteuid() != 0:
            return "network namespaces need root"
        return None

    def create(self) -> NetNamespace:
        inside = ["ip", "netns", "exec", self.name, "ip"]
        for cmd in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self._outer, "type", "veth", "peer", "name", self._inner],
            ["ip", "link", "set", self._inner, "netns", self.name],
            ["ip", "addr", "add", f"{self.outer_ip}/24", "dev", self._outer],
            ["ip", "link", "set", self._outer, "up"],
            [*inside, "addr", "add", f"{self.inner_ip}/24", "dev", self._inner],
            [*inside, "link", "set", self._inner, "up"],
            [*inside, "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        return self

    def cleanup(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self._outer], capture_output=True, timeout=30)


class S3Server:
    """moto's standalone S3 server (``python -m moto.server``, a dev dependency) on ``host``: a
    real S3 HTTP API that pyarrow, Ray Tune and Podium reach as they would MinIO or AWS, with
    the endpoint and keys in the standard variables (:meth:`env`)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port()
        self.url = f"http://{host}:{self.port}"
        self.home = Path(tempfile.mkdtemp(prefix="podium-s3-"))
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "podium-test",
            "AWS_SECRET_ACCESS_KEY": "podium-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60) -> S3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        log = open(self.home / "moto.log", "wb")  # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.home / "moto.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"moto server did not start:\n{tail}") from None
                time.sleep(0.3)

    def client(self):
        import boto3

        e = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
            region_name=e["AWS_DEFAULT_REGION"],
        )

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"podium-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object's key and size under ``prefix``."""
        out: dict[str, int] = {}
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 server on loopback for the session; each test makes its own bucket."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.cleanup()


def write_cluster_spec(
    folder: Path,
    name: str,
    model_name: str | None = None,
    storage: str | None = None,
    **sections: object,
) -> Path:
    """A two-trial digits sweep whose checkpoints go to ``storage`` (default ``folder/shared``,
    what every node of a test cluster reads), written as ``folder/<name>.yaml`` for ``podium
    run``; ``sections`` replace the spec's sections whole."""
    import yaml

    spec = {
        "name": name,
        "task": "digits",
        "model": {"arch": "mlp", "hidden": [16]},
        "optimizer": {"name": "adam", "lr": {"grid": [0.003, 0.02]}},
        "training": {"max_epochs": 2, "batch_size": 128},
        "search": {"num_samples": 1, "scheduler": "fifo", "searcher": "grid"},
        "resources": {"cpu": 1},
        "cluster": {"storage_path": storage or str(folder / "shared")},
        "promotion": {"model_name": model_name or f"{name}-model", "alias": "champion"},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def has_ray_client() -> bool:
    """Whether ``ray[client]`` (grpcio) is installed, so ``ray start --head`` serves Ray Client."""
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


def _need_postgres() -> None:
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (make install adds Debian's postgresql package)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session; each test makes its own database."""
    _need_postgres()
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL; returns its URI."""
    name = f"t_{secrets.token_hex(4)}"
    return postgres.create_database(name)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator:
    """One simulated multi-node Ray cluster for the session's cluster and fault tests.

    ``ray.cluster_utils.Cluster`` starts real Ray nodes: a head with no CPUs for trials (the
    driver's node, as in the team stack), a CPU worker, a node advertising one GPU and one
    advertising two TPU chips (fake accelerators: Ray places by them; torch finds none). Started
    once, because starting Ray nodes costs seconds each on a small machine.
    """
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_name": "head", "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, node_name="worker-1")
    cluster.add_node(num_cpus=1, num_gpus=1, node_name="gpu-node")
    cluster.add_node(num_cpus=1, resources={"TPU": 2}, node_name="tpu-node")
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def mlflow_server_factory(tmp_path: Path) -> Iterator:
    """Builds started ``MlflowServer``s; all are stopped after the test."""
    servers: list[MlflowServer] = []

    def make(backend_uri: str | None = None, auth_db_uri: str | None = None) -> MlflowServer:
        backend = backend_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
        server = MlflowServer(backend, tmp_path / "artifacts", auth_db_uri=auth_db_uri)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.cleanup()


def post_when_up(url: str, body: dict, server: subprocess.Popen, timeout: float = 120) -> dict:
    """POST ``body`` as JSON to ``url`` once ``server`` listens, and return its JSON answer.

    Only a refused connection means "not up yet": an HTTP error is the server's answer and fails
    at once, and a server that exits or never answers fails with its own output (which the
    caller must have sent to a pipe).
    """
    import json
    import urllib.error

    data = json.dumps(body).encode()
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{url} answered {e.code}: {e.read()[:2000]!r}") from None
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            server.kill()
            out = server.communicate(timeout=30)[0] if server.stdout else ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise AssertionError(f"the server at {url} did not answer: {out[-3000:]}") from None
