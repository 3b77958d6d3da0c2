"""The database handle: engines per dialect, transactions, atomic dequeue, migrations."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from conveyor.errors import map_exceptions
from conveyor.server.store.errors import StoreError
from conveyor.server.store.name_index import present as has_name_index
from conveyor.server.store.patterns import sqlite_regexp

if TYPE_CHECKING:
    from conveyor.server.store.async_pg import AsyncPg

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, pool_size=2, max_overflow=8, connect_args={"check_same_thread": False})

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
        # Name filters: bounded in time, instead of SQLAlchemy's unbounded `re.search` (see patterns.py).
        dbapi_conn.create_function("regexp", 2, sqlite_regexp, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        raw = conn.connection.dbapi_connection
        if raw is None:  # a connection being invalidated starts no transaction
            raise StoreError("the database connection was closed")
        raw.execute(begin)  # straight to sqlite3: this runs on every transaction

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
            # Each side keeps one connection open: a pool checkout costs more than the transaction it serves.
            self._write_lock: threading.Lock | None = threading.Lock()
            self._read_lock = threading.Lock()
            self._write_conn: Connection | None = None
            self._read_conn: Connection | None = None
        elif url.startswith("postgresql"):
            self.dialect = "postgresql"
            # No pre-ping: it is a round trip on every checkout. A connection that died with a restarted database
            # fails its call with a 503, which clients retry, and the pool is then renewed (here and in sql.run).
            self._writer = create_engine(url, pool_size=16, max_overflow=48)
            self._reader = self._writer
            self._autocommit = self._writer.execution_options(isolation_level="AUTOCOMMIT")  # the same pool
            self._write_lock = None
        else:
            raise StoreError(f"Unsupported database URL scheme in {self.safe_url}: use sqlite:///PATH or postgresql://…")
        # PostgreSQL's hot calls on the event loop (async_pg.py), once the server's loop has opened it.
        self.on_loop: AsyncPg | None = None

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            return "<database url>"

    @functools.cached_property
    def task_name_index(self) -> bool:
        """Whether SQLite's task-name trigram index exists (name_index.py; read once, after the migration)."""
        if self.dialect != "sqlite":
            return False
        with self.read() as conn:
            return has_name_index(conn)

    @property
    def inline(self) -> bool:
        """SQLite calls are short and local: run them on the event loop instead of hopping to a thread."""
        return self.dialect == "sqlite"

    @property
    def pg_dsn(self) -> str:
        """A libpq connection string, for the LISTEN connection and the event loop's pool."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self._writer.begin() as conn:
                yield conn
            return
        with self._write_lock:
            if self._write_conn is None or self._write_conn.closed:
                self._write_conn = self._writer.connect()
            with self._write_conn.begin():
                yield self._write_conn

    @contextmanager
    def write_statements(self) -> Iterator[Connection]:
        """For work whose every write is one atomic statement (the pop): on PostgreSQL each statement commits by
        itself, which spares the BEGIN and COMMIT round trips; SQLite gives one write transaction as `write`."""
        if self._write_lock is not None:
            with self.write() as conn:
                yield conn
            return
        with self._autocommit.connect() as conn:
            yield conn

    @contextmanager
    def read_apart(self) -> Iterator[Connection]:
        """A read transaction on a connection of its own, for long reads off the event loop: on SQLite the shared
        read connection stays free for the calls served on the loop (WAL lets readers run side by side)."""
        if self._write_lock is None:
            with self._reader.connect() as conn:
                yield conn
            return
        with self._reader.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self._reader.connect() as conn:
                yield conn
            return
        with self._read_lock:
            if self._read_conn is None or self._read_conn.closed:
                self._read_conn = self._reader.connect()
            with self._read_conn.begin():
                yield self._read_conn

    async def open_on_loop(self) -> None:
        """Open the event loop's connections (PostgreSQL; SQLite calls run on the loop already)."""
        if self.dialect == "postgresql" and self.on_loop is None:
            from conveyor.server.store.async_pg import AsyncPg

            pool = AsyncPg(self.pg_dsn)
            await pool.open()
            self.on_loop = pool

    async def close_on_loop(self) -> None:
        pool, self.on_loop = self.on_loop, None
        if pool is not None:
            await pool.close()

    def migrate(self) -> None:
        """Bring the schema to the newest version (Alembic); safe when several servers start at once."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with map_exceptions({OperationalError: self._cannot_open}), self._writer.connect() as conn:
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

    def _cannot_open(self, exc: BaseException) -> StoreError:
        orig = getattr(exc, "orig", None)
        reason = str(orig).strip().splitlines()[0] if orig else str(exc)
        return StoreError(f"Cannot open the database {self.safe_url}: {reason}")

    def dispose(self) -> None:
        for conn in (getattr(self, "_write_conn", None), getattr(self, "_read_conn", None)):
            if conn is not None:
                conn.close()
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()


def sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(data_dir).expanduser() / 'conveyor.db'}"
