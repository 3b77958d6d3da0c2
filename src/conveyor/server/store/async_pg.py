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
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from conveyor.server.codec import dumps
from conveyor.server.store.coalescing import Coalescer
from conveyor.server.store.notify import Peers
from conveyor.server.store.sql import LOCK_TIMEOUT_MS, statement

log = logging.getLogger("conveyor.server")

POOL_SIZE = 4  # connections opened at start; calls beyond them wait for one, up to POOL_MAX connections
POOL_MAX = 16
CHECKOUT_TIMEOUT_SEC = 10.0


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # A statement, not the connection's `options`: those would replace any the database URL sets (a search_path), and
    # poolers such as PgBouncer refuse them.
    await conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")


Pop = tuple[str, float, str | None]  # a popped entry: (task, when it was added, the worker it is held back from)


@dataclass(frozen=True)
class PopRequest:
    runner: str | None  # the popping access key, which may then report on the task
    worker: str | None  # the popping worker, when it says: it skips an entry held back from it (a retry's `avoid`)
    since: float  # entries held back from a worker are those added after this (epoch seconds)


def _one_rows_error(exc: Exception) -> bool:
    """An error that one row's values can cause: a statement for several is then run again one by one, so that the
    call with that row alone fails."""
    return isinstance(exc, (DataError, IntegrityError))


def _named(statement_name: str, quiet: bool) -> str:
    """The statement, or its twin without the NOTIFY (sql.py) while no other server process listens."""
    return f"{statement_name}_quiet" if quiet else statement_name


class AsyncPg:
    """A pool of autocommit connections to the store's PostgreSQL database, opened on the server's event loop."""

    def __init__(self, dsn: str):
        self._pool = AsyncConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_MAX, open=False,
                                         kwargs={"autocommit": True}, configure=_configure,
                                         timeout=CHECKOUT_TIMEOUT_SEC,
                                         name="conveyor-api")
        self._checking: asyncio.Task[None] | None = None
        self._enqueues: Coalescer[dict[str, Any], bool] = Coalescer(self._enqueue_many, split_on=_one_rows_error)
        self._pops: dict[str, Coalescer[PopRequest, Pop | None]] = {}
        self._policies: Coalescer[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = Coalescer(
            self._pull_policies, split_on=_one_rows_error)
        self.peers: Peers | None = None  # set by the server's LISTEN (store/notify.py): whether to NOTIFY others
        # This process's long-polls, woken by the enqueues themselves: a call cancelled after its statement was sent
        # cannot leave them asleep (no NOTIFY may come back to wake them).
        self.woken: Callable[[list[str]], None] = lambda _: None

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

    async def enqueue(self, row: dict[str, Any]) -> bool:
        """Save a task and add its entry, if its stored document is still `row["old"]` and its queue takes it
        (`enqueue_write`); concurrent enqueues share one statement. True when it was enqueued."""
        return await self._enqueues(row)

    async def _enqueue_many(self, rows: list[dict[str, Any]]) -> list[bool | Exception]:
        # One task twice in a statement would be saved from either row: a later row goes in a statement of its own.
        first: dict[str, dict[str, Any]] = {}
        later = []
        for row in rows:
            if row["id"] in first:
                later.append(row)
            else:
                first[row["id"]] = row
        batch = list(first.values())
        quiet = self.peers is not None and self.peers.quiet
        arrivals = self.peers.arrivals if self.peers is not None else 0
        if len(batch) == 1:
            enqueued = {batch[0]["id"]} if await self.fetch(_named("enqueue_write", quiet), batch[0]) else set()
        else:
            rows_json = dumps([{**row, "n": n} for n, row in enumerate(batch)])
            enqueued = {task for task, _ in await self.fetch(_named("enqueue_many", quiet), {"rows": rows_json})}
        outcome: dict[int, bool | Exception] = {id(row): row["id"] in enqueued for row in batch}
        await self._enqueued({row["q"] for row in batch if row["id"] in enqueued}, quiet, arrivals)
        for row in later:  # the statement above committed: an error here is this row's alone
            try:
                outcome[id(row)] = (await self._enqueue_many([row]))[0]
            except Exception as exc:  # noqa: BLE001 - its caller raises it
                outcome[id(row)] = exc
        return [outcome[id(row)] for row in rows]

    async def _enqueued(self, queue_ids: set[str], quiet: bool, arrivals: int) -> None:
        """Wake this process's long-polls on the queues that got entries; and where the statement went without its
        NOTIFY but another server process has begun to listen since, send it now."""
        if not queue_ids:
            return
        self.woken(sorted(queue_ids))
        if quiet and self.peers is not None and self.peers.arrivals != arrivals:
            with contextlib.suppress(Exception):  # the newcomer's long-polls look again soon (notify.CATCH_UP_SEC)
                await self.fetch("notify_queues", {"qs": sorted(queue_ids)})

    async def pull_policy(self, worker: str, queue_ids: list[str]) -> list[tuple[Any, ...]]:
        """What a named worker's pop must respect (`pull_policy`): (queue, its tags, the worker's `force` value and
        expiry) for each of the queues that exists; concurrent ones share one statement."""
        return await self._policies((worker, tuple(queue_ids)))

    async def _pull_policies(self, asked: list[tuple[str, tuple[str, ...]]]) -> list[list[tuple[Any, ...]] | Exception]:
        if len(asked) == 1:
            worker, ids = asked[0]
            return [await self.fetch("pull_policy", {"w": worker, "ids": list(ids)})]
        reqs = dumps([{"n": n, "w": worker, "ids": list(ids)} for n, (worker, ids) in enumerate(asked)])
        rows: list[list[tuple[Any, ...]]] = [[] for _ in asked]
        for n, *row in await self.fetch("pull_policies", {"reqs": reqs}):
            rows[n].append(tuple(row))
        return list(rows)

    async def pop(self, queue_id: str, request: PopRequest) -> Pop | None:
        """Take the head entry of one queue for `request` and record its delivery (`pop_and_deliver`): (task, added,
        avoid), or None when there is none it may take; concurrent pops of one queue share one statement."""
        pops = self._pops.get(queue_id)
        if pops is None:
            pops = self._pops[queue_id] = Coalescer(
                lambda requests: self._pop_many(queue_id, requests), split_on=_one_rows_error,
                orphaned=lambda _, popped: self._give_back(queue_id, popped),
                on_idle=lambda: self._forget_pops(queue_id))
        return await pops(request)

    def _forget_pops(self, queue_id: str) -> None:
        self._pops.pop(queue_id, None)

    async def _pop_many(self, queue_id: str,
                        requests: list[PopRequest]) -> list[Pop | None | Exception]:
        if len(requests) > 1:
            rows = await self.fetch("pop_many", {
                "q": queue_id, "k": len(requests), "since": min(r.since for r in requests), "d": time.time(),
                "runner": [r.runner for r in requests], "w": [r.worker for r in requests]})
            if all(n for n, *_ in rows):  # no entry held back from some worker (a retry's): the head went in order
                got = {n: (task, added, avoid) for n, task, added, avoid in rows}
                return [got.get(n) for n in range(1, len(requests) + 1)]
        # One statement a pop, each committing by itself: a failed one is its pop's alone (those before it took
        # their entries).
        answers: list[Pop | None | Exception] = []
        for r in requests:
            try:
                rows = await self.fetch("pop_and_deliver", {"q": queue_id, "d": time.time(), "runner": r.runner,
                                                            "w": r.worker, "since": r.since})
            except Exception as exc:  # noqa: BLE001 - its caller raises it
                if len(requests) == 1:
                    raise
                if _one_rows_error(exc):
                    answers.append(exc)
                    continue
                # the database out of reach: the pops left get that answer now, not each after a wait of its own
                answers += [exc] * (len(requests) - len(answers))
                break
            answers.append((rows[0][0], rows[0][1], rows[0][2]) if rows else None)
        return answers

    async def _give_back(self, queue_id: str, popped: Pop | None) -> None:
        """A pop whose caller stopped waiting: its entry goes back to the front of the queue, as it was."""
        if popped is not None:
            await self.fetch("give_back", {"t": popped[0], "q": queue_id, "a": popped[1], "v": popped[2]})

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
