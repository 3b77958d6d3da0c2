"""Work a server process does besides answering: PostgreSQL LISTEN, reaping workers that stopped reporting, and
putting back tasks popped for clients that never got them."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from conveyor.server.services.queues import requeue_unstarted
from conveyor.server.services.workers import reap
from conveyor.server.state import ServerState
from conveyor.server.store.notify import PgListener

log = logging.getLogger("conveyor.server")


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
