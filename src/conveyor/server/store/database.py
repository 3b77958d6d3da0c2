"""The database handle: engines per dialect, transactions, atomic dequeue, migrations."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import TextClause, create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(Exception):
    """A database that cannot be opened or migrated; the message says which and what to do."""


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, pool_size=8, max_overflow=32, pool_pre_ping=False)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _rec: Any) -> None:
        # Take transaction control from pysqlite so that BEGIN IMMEDIATE is ours to issue.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a killed process (it is in the WAL file);
        # only a power loss can take the last commits, which FULL would protect at one fsync per commit.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Store:
    """Opens the database at `url` (sqlite:///path or postgresql://…) and hands out transactions."""

    def __init__(self, url: str):
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        self.url = url
        if url.startswith("sqlite"):
            self.dialect = "sqlite"
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._writer = _sqlite_engine(url, "BEGIN IMMEDIATE")
            self._reader = _sqlite_engine(url, "BEGIN")
            # One server process owns a SQLite file; writes queue up here rather than spinning on SQLITE_BUSY.
            self._write_lock: threading.Lock | None = threading.Lock()
        elif url.startswith("postgresql"):
            self.dialect = "postgresql"
            self._writer = create_engine(url, pool_size=16, max_overflow=48, pool_pre_ping=True)
            self._reader = self._writer
            self._write_lock = None
        else:
            raise StoreError(f"Unsupported database URL scheme in {self.safe_url}: use sqlite:///PATH or postgresql://…")

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<database url>"

    @property
    def inline(self) -> bool:
        """SQLite calls are short and local: run them on the event loop instead of hopping to a thread."""
        return self.dialect == "sqlite"

    @property
    def pg_dsn(self) -> str:
        """A libpq connection string for the LISTEN connection."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._writer.begin() as conn:
                yield conn
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    @cached_property
    def pop_statement(self) -> TextClause:
        """Delete and return the head entry of one queue, atomically (two workers never get one entry)."""
        if self.dialect == "postgresql":
            return text(
                "DELETE FROM queue_entries WHERE seq = (SELECT seq FROM queue_entries WHERE queue = :q "
                "ORDER BY position, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING task, added"
            )
        # Under BEGIN IMMEDIATE the whole database is write-locked, so the sub-select cannot race.
        return text(
            "DELETE FROM queue_entries WHERE seq = (SELECT seq FROM queue_entries WHERE queue = :q "
            "ORDER BY position, seq LIMIT 1) RETURNING task, added"
        )

    def migrate(self) -> None:
        """Bring the schema to the newest version (Alembic); safe when several servers start at once."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self._writer.connect() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_lock(7405120)"))
                    conn.commit()
                try:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    conn.commit()
                finally:
                    if self.dialect == "postgresql":
                        conn.execute(text("SELECT pg_advisory_unlock(7405120)"))
                        conn.commit()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreError(f"Cannot open the database {self.safe_url}: {reason}") from None

    def dispose(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()


def sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(data_dir).expanduser() / 'conveyor.db'}"
