"""Wake-ups for long-polls: an in-process signal, fed by LISTEN/NOTIFY on PostgreSQL across server processes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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


class PgListener:
    """LISTENs on PostgreSQL in a thread and forwards each queue id to the local signals."""

    def __init__(self, dsn: str, signals: QueueSignals):
        self.dsn = dsn
        self.signals = signals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        backoff = 0.2
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    backoff = 0.2
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.signals.notify(note.payload)
            except Exception as exc:  # noqa: BLE001 - logged; whatever broke the connection, the loop reconnects
                log.warning("PostgreSQL LISTEN connection lost (%s); reconnecting", exc.__class__.__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
