"""Wake-ups for long-polls: an in-process signal, fed by LISTEN/NOTIFY on PostgreSQL across server processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("conveyor.server")

CHANNEL = "conveyor_queues"


class QueueSignals:
    """Futures of requests waiting on queues; `notify` may be called from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._waiters: dict[str, set[asyncio.Future[str]]] = defaultdict(set)
        self.closing = False  # the server is shutting down: long-polls answer "nothing" at once

    def close(self) -> None:
        """Wake every waiting request for good (from any thread, a signal handler included): a shutdown must not
        wait out the long-polls."""
        self.closing = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    def wake_all(self) -> None:
        """Every waiting request looks at its queues again (on the loop's thread)."""
        self._wake_all()

    def _wake_all(self) -> None:
        for waiters in list(self._waiters.values()):
            for fut in list(waiters):
                if not fut.done():
                    fut.set_result("")

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread_id = threading.get_ident()

    @contextmanager
    def listen(self, queue_ids: Iterable[str]) -> Iterator[asyncio.Future[str]]:
        """Register before looking at the queue, so that an entry added in between is not missed."""
        assert self._loop is not None, "QueueSignals.bind() was not called"
        fut: asyncio.Future[str] = self._loop.create_future()
        ids = list(queue_ids)
        for qid in ids:
            self._waiters[qid].add(fut)
        try:
            yield fut
        finally:
            for qid in ids:
                waiters = self._waiters.get(qid)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[qid]

    def notify(self, queue_id: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread_id:
            self._wake(queue_id)
        else:
            loop.call_soon_threadsafe(self._wake, queue_id)

    def _wake(self, queue_id: str) -> None:
        for fut in list(self._waiters.get(queue_id, ())):
            if not fut.done():
                fut.set_result(queue_id)


LISTENER_APP = "conveyor-listen"  # the application_name of each server process's LISTEN connection
HELLO = "conveyor:hello"  # a payload no queue id takes: a server process has just begun to listen
PEERS_CHECK_SEC = 1.0
# After it begins to listen, a server process's long-polls look again once, this long after: an enqueue through
# another process that did not know of it yet sent no NOTIFY (Peers).
CATCH_UP_SEC = 2.5 * PEERS_CHECK_SEC


class Peers:
    """Whether another server process listens on this database: while none does, the event loop's enqueues send no
    NOTIFY. Unknown counts as yes: the LISTEN connection down, the check refused or late, or its last answer older
    than two checks."""

    def __init__(self) -> None:
        self._alone_until = 0.0  # time.monotonic()
        self.arrivals = 0  # counts each time another process was found listening: an enqueue sent quiet NOTIFYs after

    @property
    def quiet(self) -> bool:
        return time.monotonic() < self._alone_until

    def alone(self, alone: bool) -> None:
        if not alone:
            self.arrivals += 1
        self._alone_until = time.monotonic() + 2 * PEERS_CHECK_SEC if alone else 0.0


class PgListener:
    """LISTENs on PostgreSQL from the event loop and passes each queue id to the local signals: a notification costs
    the loop one read, where a listening thread took the interpreter lock from the loop for each one.

    It also keeps `peers` up to date: every second it asks PostgreSQL whether another server process's LISTEN
    connection is open, and a process that begins to listen says so (HELLO), so that the others send their NOTIFYs
    again at once. What an enqueue sent in between without one, the newcomer's long-polls find when they look again
    (CATCH_UP_SEC), as they do after the connection was lost and notifications with it."""

    def __init__(self, dsn: str, signals: QueueSignals):
        self.dsn = dsn
        self.signals = signals
        self.peers = Peers()
        self.ready = asyncio.Event()  # set once the first LISTEN is in place
        self._task: asyncio.Task[None] | None = None
        self._catch_up: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._catch_up is not None:
            self._catch_up.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import psycopg

        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True,
                                                                 application_name=LISTENER_APP) as conn:
                    # Its own statements (the check) end after a while, on the server: a stalled connection is
                    # dropped and opened again rather than holding the check up.
                    await conn.execute(f"SET statement_timeout = {int(2000 * PEERS_CHECK_SEC)}")
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, HELLO))
                    self.ready.set()
                    backoff = 0.2
                    loop = asyncio.get_running_loop()
                    self._catch_up = loop.call_later(CATCH_UP_SEC, self.signals.wake_all)
                    await self._listen(conn)
            except (psycopg.Error, asyncio.TimeoutError) as exc:  # the database restarted, is out of reach, or stalls
                log.warning("PostgreSQL LISTEN connection lost (%s); reconnecting", exc.__class__.__name__)
            except Exception:  # a bug: logged, and listening goes on (other servers' wake-ups depend on it)
                log.exception("PostgreSQL LISTEN failed; reconnecting")
            self.peers.alone(False)  # unknown: NOTIFY
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _listen(self, conn: Any) -> None:
        own = conn.info.backend_pid
        while True:
            self.peers.alone(not await asyncio.wait_for(self._others_listen(conn), 5 * PEERS_CHECK_SEC))
            async for note in conn.notifies(timeout=PEERS_CHECK_SEC):
                if note.payload == HELLO:
                    if note.pid != own:
                        self.peers.alone(False)
                    continue
                self.signals.notify(note.payload)

    async def _others_listen(self, conn: Any) -> bool:
        """Whether another server process's LISTEN connection is open: by its application name (a pooler may add to
        it), or by its last statement (a LISTEN, whatever its release or name)."""
        import psycopg

        try:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND (application_name LIKE %s OR query = %s)", (LISTENER_APP + "%", f"LISTEN {CHANNEL}"))
            row = await cursor.fetchone()
            # LISTEN again, a no-op but for what pg_stat_activity shows other processes: this connection's last
            # statement, by which a server process of any release, and one under any application name, knows it.
            await conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.errors.InsufficientPrivilege:
            return True
        return row is None or row[0] > 0
