"""Shared fixtures: a real `conveyor server` process on a loopback port, on SQLite or on a fresh PostgreSQL database."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

PG_ADMIN = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`conveyor server` as a user starts it, with its own HOME so that first-start credentials land there."""

    def __init__(self, home: Path, db: str | None = None, port: int | None = None, extra_env: dict | None = None):
        self.home = home
        self.db = db
        self.port = port or free_port()
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = home / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.home / "clearml.conf"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
        # HOME makes ~/clearml.conf this server's first-start file, for the server and every client alike.
        env.update(HOME=str(self.home), PYTHONUNBUFFERED="1",
                   CONVEYOR__SERVER__REAP_INTERVAL_SEC="0.5")
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "conveyor", "server", "--port", str(self.port),
               "--data-dir", str(self.home / ".conveyor"), "--client-config", str(self.config_file)]
        if self.db:
            cmd += ["--db", self.db]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/debug.ping", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def credentials(self) -> tuple[str, str]:
        from conveyor.config import load_config

        cfg = load_config(self.config_file, environ={})
        return cfg.access_key, cfg.secret_key

    def client(self, **kw):  # noqa: ANN201 - ApiClient
        from conveyor.client import ApiClient

        key, secret = self.credentials()
        return ApiClient(self.url, key, secret, **kw)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def unavailable(reason: str, remedy: str = ".ci/run must install and start it") -> NoReturn:
    """A test's engine is missing: skip here, fail in CI (which must provide every engine)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; {remedy}")
    pytest.skip(reason)


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


def schema_at(url: str, revision: str, down: bool = False) -> None:
    """Migrate the database at `url` up (or `down`) to `revision`: an install from before the migrations after it."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from conveyor.server.store import Store
    from conveyor.server.store.database import MIGRATIONS

    store = Store(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store._writer.connect() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
        conn.commit()
    store.dispose()


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards; skips (fails on CI) when PostgreSQL is not running."""
    if not _pg_available():
        unavailable(f"PostgreSQL is not reachable at {PG_ADMIN}", ".ci/run must start it")
    import psycopg

    name = f"conveyor_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None means the embedded default (SQLite in the data dir)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


@pytest.fixture
def server(tmp_path: Path, db_url: str | None) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "home", db=db_url).start()
    yield proc
    proc.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "home").start()
    yield proc
    proc.stop()
