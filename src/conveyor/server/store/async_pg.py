"""PostgreSQL on the event loop, for the calls every agent makes all the time (the pop, the enqueue).

Each of these calls is a statement or two. Served from a thread as the other calls are, each one pays two hops
between threads and, per statement, hands the interpreter lock back and forth with the event loop and the other
threads: on a 2-core machine that cost four times the statements' own. Here the statements are awaited on the loop
(psycopg's async connections, pooled by psycopg_pool), each committing by itself.

Errors come out as SQLAlchemy's (OperationalError, DataError, ...), so the API's one translation of database errors
applies to these calls too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.exc import DBAPIError

from conveyor.server.store.sql import statement

log = logging.getLogger("conveyor.server")

POOL_SIZE = 4  # connections opened at start; calls beyond them wait for one, up to POOL_MAX connections
POOL_MAX = 16
CHECKOUT_TIMEOUT_SEC = 10.0
# A row held by a long transaction (a psql session) makes these calls fail with a 503, which clients retry, rather
# than each holding one of the pool's few connections while it waits.
LOCK_TIMEOUT_MS = 5000


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # A statement, not the connection's `options`: those would replace any the database URL sets (a search_path), and
    # poolers such as PgBouncer refuse them.
    await conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")


class AsyncPg:
    """A pool of autocommit connections to the store's PostgreSQL database, opened on the server's event loop."""

    def __init__(self, dsn: str):
        self._pool = AsyncConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_MAX, open=False,
                                         kwargs={"autocommit": True}, configure=_configure,
                                         timeout=CHECKOUT_TIMEOUT_SEC,
                                         name="conveyor-api")
        self._checking: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=CHECKOUT_TIMEOUT_SEC)

    async def close(self) -> None:
        await self._pool.close()

    async def fetch(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run the named statement (store/sql.py) and return its rows ([] for a statement that returns none)."""
        sql = statement(name, "postgresql")
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                self._check_soon()
            raise DBAPIError.instance(sql, params, exc, psycopg.Error, hide_parameters=True) from exc

    def _check_soon(self) -> None:
        """After a lost connection (the database restarted), find the pool's other dead connections now rather than
        failing one call each: the pool replaces what its check finds broken."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        try:
            await self._pool.check()
        except Exception as exc:  # noqa: BLE001 - the next calls find out again; this is only a head start
            log.warning("checking PostgreSQL connections failed: %s", exc.__class__.__name__)
