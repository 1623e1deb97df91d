"""A throwaway PostgreSQL server: Debian's binaries, a fresh data folder, a free loopback port.

Tests (and the team-stack integration test) use it as the real database behind ``mlflow server``.
It is a real ``postgres`` process, started and stopped here; nothing is mocked.

PostgreSQL refuses to run as root, and CI runs as root: then the data folder is handed to the
``postgres`` system user (created by Debian's package) and every binary runs through ``runuser``.

Example::

    with PostgresServer() as pg:
        pg.create_database("mlflow")
        uri = pg.uri("mlflow")   # postgresql+psycopg2://podium:...@127.0.0.1:PORT/mlflow
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "podium"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb``, or None."""

    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temp folder, listening on 127.0.0.1 only, password auth.

    Args:
        port: TCP port; a free one by default.
        bin_dir: folder with ``initdb`` and ``pg_ctl``; found under /usr/lib/postgresql by default.
    """

    def __init__(self, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError(
                "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: "
                "apt-get install --no-install-recommends postgresql"
            )
        self.port = port or free_port()
        self.password = secrets.token_hex(12)
        self.root = Path(tempfile.mkdtemp(prefix="podium-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0

    # ------------------------------------------------------------------ process control

    def _cmd(self, *args: str) -> list[str]:
        # As root, PostgreSQL's binaries must run as an unprivileged user.
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def _run(self, *args: str) -> None:
        proc = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )

    def start(self) -> PostgresServer:
        """initdb (first time only) and start the server; returns once it accepts connections."""
        if not self.data.exists():
            self._initdb()
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._wait_ready()
        return self

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            # mkdtemp makes a 0700 root folder; the postgres user needs to own it.
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "scram-sha-256",
            "--pwfile",
            str(pwfile),
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as f:
            # Loopback only; the Unix socket lives in our folder (the system one may be unwritable).
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "max_connections = 200\n"
            )

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.data.exists():
            pg_ctl = str(self.bin_dir / "pg_ctl")
            subprocess.run(
                self._cmd(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ connecting

    def dsn(self, database: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={USER} password={self.password} "
            f"dbname={database}"
        )

    def uri(self, database: str = "postgres") -> str:
        """A SQLAlchemy/MLflow URI, e.g. ``postgresql+psycopg2://podium:pw@127.0.0.1:5433/mlflow``.

        The driver is named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, and
        Podium installs psycopg2.
        """
        return f"postgresql+psycopg2://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URI (CREATE DATABASE needs autocommit)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)

    def query(self, database: str, sql: str, args: tuple = ()) -> list[tuple]:
        """Run one statement and return its rows (what tests use to look inside PostgreSQL)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(database))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()
