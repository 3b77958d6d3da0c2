"""Work a server process does besides answering: PostgreSQL LISTEN, reaping workers that stopped reporting,
putting back tasks popped for clients that never got them, and keeping the stats history (queue samples, folding
old worker reports and samples)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from conveyor.server.model import deliveries, queue_metrics, worker_stats, workers
from conveyor.server.state import ServerState
from conveyor.server.store.errors import first_line
from conveyor.server.store.notify import PgListener

log = logging.getLogger("conveyor.server")
FOLD_EVERY = 10  # sweeps between foldings of the stats history


def reap(state: ServerState) -> list[str]:
    """Forget workers that missed their timeout and fail what they ran. Returns the tasks failed."""
    requeued: set[str] = set()
    with state.store.write() as conn:
        lost = workers.reap(conn, time.time(), requeued)
    state.wake(requeued)  # a lost task its `retries` put back: the long-polls of its queue take it at once
    return lost


def keep_history(state: ServerState, last_slot: int | None, fold: bool) -> int:
    """Sample the queues once a sampling period (`last_slot` is this process's last sample) and, with `fold`, fold
    old worker reports and queue samples into their coarser tiers. Returns the slot sampled."""
    settings = state.settings
    at = time.time()
    slot = int(at // settings.queue_metrics_sample_sec * settings.queue_metrics_sample_sec)
    if slot != last_slot:
        with state.store.write() as conn:
            queue_metrics.sample(conn, at, settings.queue_metrics_sample_sec)
    if fold:
        with state.store.write() as conn:
            queue_metrics.compact(conn, before=at - settings.worker_stats_raw_sec, now=at,
                                  keep_days=settings.worker_stats_keep_days)
        with state.store.write() as conn:
            worker_stats.compact(conn, before=at - settings.worker_stats_raw_sec,
                                 keep_per_worker=settings.worker_stats_history, now=at,
                                 keep_days=settings.worker_stats_keep_days)
    return slot


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


def _failed(what: str, exc: Exception) -> None:
    """A database that is restarting or out of reach is a line in the log (the next sweep tries again); anything else
    is a bug, logged with its traceback."""
    if isinstance(exc, OperationalError):
        log.warning("%s: database unavailable: %s", what, first_line(exc))
    else:
        log.error("%s", what, exc_info=exc)


class Background:
    def __init__(self, state: ServerState):
        self.state = state
        self._listener: PgListener | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._slot: int | None = None  # the queue-metrics slot this process sampled last
        self._sweeps = 0

    async def start(self) -> None:
        if self.state.store.dialect == "postgresql":
            self._listener = PgListener(self.state.store.pg_dsn, self.state.signals)
            self._listener.start()
            # Long-polls miss other servers' enqueues until it listens: wait for it a while, then it keeps trying.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listener.ready.wait(), 10)
            try:
                await self.state.store.open_on_loop()
                if self.state.store.on_loop is not None:
                    self.state.store.on_loop.peers = self._listener.peers
                    self.state.store.on_loop.woken = self.state.wake
            except Exception as exc:  # noqa: BLE001 - the calls it would serve go through threads instead
                log.warning("PostgreSQL connections for the event loop could not be opened (%s): pops and enqueues "
                            "are served from threads", exc)
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        try:
            if self._listener:
                await self._listener.stop()
        finally:
            await self.state.store.close_on_loop()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.state.settings.reap_interval_sec)
            try:
                lost = await run_in_threadpool(reap, self.state)
                for task_id in lost:
                    log.warning("task %s failed: its worker stopped reporting", task_id)
            except Exception as exc:  # noqa: BLE001 - logged by _failed; a database hiccup must not end the loop
                _failed("reaping workers failed", exc)
            try:
                # Folding scans the raw history: every tenth sweep is often enough (reports fold after an hour).
                fold = self._sweeps % FOLD_EVERY == 0
                self._sweeps += 1
                self._slot = await run_in_threadpool(keep_history, self.state, self._slot, fold)
            except Exception as exc:  # noqa: BLE001 - logged by _failed
                _failed("keeping the stats history failed", exc)
            try:
                for task_id in await run_in_threadpool(requeue_unstarted, self.state):
                    log.warning("task %s was popped but never started: back at the front of its queue", task_id)
            except Exception as exc:  # noqa: BLE001 - logged by _failed
                _failed("putting back unstarted tasks failed", exc)
