"""Forcing workers on or off: queue tags (`force_workers:on|off`) and the runtime property `force`, seen from the
server. The daemon decides (it alone knows its schedule); the server ends a waiting long-poll when either changes,
and a long-poll naming its worker never hands out a task from a queue the worker must not pull from, so a change
made while the daemon was between two looks cannot slip a task through."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.engine import Connection

from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED
from conveyor.server.codec import loads, now
from conveyor.server.store import schema as s
from conveyor.server.store import sql

if TYPE_CHECKING:
    from conveyor.server.store.async_pg import AsyncPg

FORCE_KEY = "force"
POLICY_PREFIX = "policy:"  # a wake-up key: not an entry to pop, but a reason for the waiting daemon to look again


def queue_key(queue_id: str) -> str:
    return f"{POLICY_PREFIX}queue:{queue_id}"


def worker_key(worker: str) -> str:
    return f"{POLICY_PREFIX}worker:{worker}"


def announce(conn: Connection, key: str) -> None:
    """On PostgreSQL, the commit tells the other server processes (their long-polls wake as on an enqueue)."""
    sql.run(conn, "notify", {"q": key})


def worker_forced_off(conn: Connection, worker: str) -> bool:
    c = s.runtime_properties.c
    row = conn.execute(select(c.value, c.expires).where(c.worker == worker, c.key == FORCE_KEY)).first()
    return row is not None and forces_off(row.value, row.expires)


def forces_off(value: str | None, expires: float | None) -> bool:
    """Whether a `force` property (its value and expiry; None: not set) keeps its worker off now."""
    return value is not None and value.strip().lower() == "off" and (expires is None or expires > now())


def closed_queues(conn: Connection, worker: str | None, queue_ids: list[str]) -> set[str]:
    """Of `queue_ids`, those `worker` must not pull from now: tagged off, or (untagged on) with the worker forced
    off by its runtime property."""
    off = worker_forced_off(conn, worker) if worker else False
    return closed_of(conn.execute(select(s.queues.c.id, s.queues.c.tags).where(s.queues.c.id.in_(queue_ids))).all(),
                     off)


async def closed_on_loop(pg: AsyncPg, worker: str, queue_ids: list[str]) -> set[str]:
    """`closed_queues` on PostgreSQL's event-loop connections, in one statement (shared by concurrent pops)."""
    rows = await pg.pull_policy(worker, queue_ids)
    off = bool(rows) and forces_off(rows[0][2], rows[0][3])
    return closed_of(((qid, tags) for qid, tags, _, _ in rows), off)


def closed_of(queue_tags: Iterable[tuple[str, str]], worker_off: bool) -> set[str]:
    """`closed_queues` from each queue's (id, tags as stored) and whether the worker is forced off."""
    closed = set()
    for qid, stored in queue_tags:
        tags = loads(stored) or []
        if QUEUE_PAUSED in tags or (worker_off and QUEUE_FORCED_ON not in tags):
            closed.add(qid)
    return closed
