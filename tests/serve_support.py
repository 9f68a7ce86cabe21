"""Helpers for the serve tests: configs, an in-thread uvicorn server, a throwaway PostgreSQL cluster.

Everything here is real: uvicorn on a loopback port, SQLite files, a PostgreSQL 15 cluster made by
`initdb` in a temporary folder (as the `postgres` user when the tests run as root: initdb refuses
root) and reached over its unix socket only; it is stopped with `pg_ctl -m immediate` at teardown.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from hydra import compose, initialize_config_dir

from rlprompt.config import RunConfig, config_dir, validate

# Cheap, deterministic, real reward modules for the serve tests (rule-based: no model loads).
REWARD_MODULES = {"expert": 1.0}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_run(database: str, *overrides: str) -> RunConfig:
    """The composed `rlprompt serve` config (configs/gateway.yaml) with test overrides."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "gateway",
            overrides=[f"serve.database='{database}'", "serve.refresh_s=0", "threads=1", *overrides],
        )
    run = validate(cfg)
    run.reward.modules, run.reward.options = dict(REWARD_MODULES), {}
    return run


class ThreadServer:
    """uvicorn serving an ASGI app on a free loopback port, in a thread of the test process."""

    def __init__(self, app) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class PostgresCluster:
    """A throwaway PostgreSQL cluster: initdb in a temp folder, a unix socket there, no TCP."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rlprompt-pg-"))
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            uid = pwd.getpwnam(self.user)
            os.chown(self.dir, uid.pw_uid, uid.pw_gid)

    def _run(self, *args: str) -> None:
        command = ["runuser", "-u", self.user, "--", *args] if self.user else list(args)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}\n{done.stderr}")

    def start(self) -> str:
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-k {self.dir} -p {self.port} -c listen_addresses='' -c max_connections=100"
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        return f"postgresql+psycopg://postgres@/postgres?host={self.dir}&port={self.port}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def postgres_available() -> str | None:
    """None when initdb/pg_ctl can run here, else the reason to skip."""
    missing = [b for b in ("initdb", "pg_ctl") if shutil.which(b) is None]
    if missing:
        return f"PostgreSQL binaries not on PATH: {', '.join(missing)}"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        return "running as root needs the 'postgres' user and runuser (initdb refuses root)"
    return None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def fresh_database(url: str, name: str) -> str:
    """A new, empty database in the cluster behind `url`; its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.replace("/postgres?", f"/{name}?")


@pytest.fixture(scope="session")
def postgres_url():
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
