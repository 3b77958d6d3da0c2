"""Work a server process does besides answering: PostgreSQL LISTEN, reaping workers that stopped reporting, and
putting back tasks popped for clients that never got them."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool

from conveyor.server.model import deliveries, workers
from conveyor.server.state import ServerState
from conveyor.server.store.notify import PgListener

log = logging.getLogger("conveyor.server")


def reap(state: ServerState) -> list[str]:
    """Forget workers that missed their timeout and fail what they ran; bound the stats history. Returns the tasks
    failed."""
    with state.store.write() as conn:
        lost = workers.reap(conn, time.time())
    with state.store.write() as conn:
        workers.trim_stats(conn, state.settings.worker_stats_history)
    return lost


def requeue_unstarted(state: ServerState) -> list[str]:
    """Put back at the front of its queue each task popped more than `unstarted_requeue_sec` ago that is still
    `queued` and in no queue: the answer that carried it never reached a client that would start it (the client
    gave up as it was written, or died). Agents start a task at once, which acknowledges the delivery.
    Returns the tasks put back."""
    limit = state.settings.unstarted_requeue_sec
    if limit <= 0:
        return []
    with state.store.read() as conn:
        stale = deliveries.stale(conn, time.time() - limit)
    requeued: list[str] = []
    woken: set[str] = set()
    for task_id, delivered in stale:
        with state.store.write() as conn:  # one transaction a task: a sweep never holds the write lock for long
            queue_id = deliveries.requeue(conn, task_id, delivered)
        if queue_id is not None:
            woken.add(queue_id)
            requeued.append(task_id)
    state.wake(woken)
    return requeued


class Background:
    def __init__(self, state: ServerState):
        self.state = state
        self._listener: PgListener | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.state.store.dialect == "postgresql":
            self._listener = PgListener(self.state.store.pg_dsn, self.state.signals)
            self._listener.start()
            await run_in_threadpool(self._listener.ready.wait, 10)
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        if self._listener:
            self._listener.stop()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.state.settings.reap_interval_sec)
            try:
                lost = await run_in_threadpool(reap, self.state)
                for task_id in lost:
                    log.warning("task %s failed: its worker stopped reporting", task_id)
            except Exception:  # a database hiccup must not end the loop
                log.exception("reaping workers failed")
            try:
                for task_id in await run_in_threadpool(requeue_unstarted, self.state):
                    log.warning("task %s was popped but never started: back at the front of its queue", task_id)
            except Exception:
                log.exception("putting back unstarted tasks failed")
