"""Forcing workers on or off: queue tags (`force_workers:on|off`) and the runtime property `force`, seen from the
server. The daemon decides (it alone knows its schedule); the server ends a waiting long-poll when either changes,
and a long-poll naming its worker never hands out a task from a queue the worker must not pull from, so a change
made while the daemon was between two looks cannot slip a task through."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Connection

from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED
from conveyor.server.codec import loads, now
from conveyor.server.store import schema as s
from conveyor.server.store import sql

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
    if row is None:
        return False
    return bool(row.value.strip().lower() == "off" and (row.expires is None or row.expires > now()))


def closed_queues(conn: Connection, worker: str | None, queue_ids: list[str]) -> set[str]:
    """Of `queue_ids`, those `worker` must not pull from now: tagged off, or (untagged on) with the worker forced
    off by its runtime property."""
    off = worker_forced_off(conn, worker) if worker else False
    closed = set()
    for qid, tags in conn.execute(select(s.queues.c.id, s.queues.c.tags).where(s.queues.c.id.in_(queue_ids))).all():
        tags = loads(tags) or []
        if QUEUE_PAUSED in tags or (off and QUEUE_FORCED_ON not in tags):
            closed.add(qid)
    return closed
