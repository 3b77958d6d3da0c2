"""Deliveries: popping a queue's head entry for a client, and putting back what never reached one.

A pop is recorded as a delivery in its own transaction; the delivery lasts until the task leaves `queued` (its
runner starts it). A delivery nobody acknowledged within `unstarted_requeue_sec` puts the task back at the front."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from conveyor.protocol.status import TaskStatus
from conveyor.server.model.tasks import back_to_before_enqueue
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.documents import add_entry, get_queue, get_task, record_delivery, return_delivery
from conveyor.server.traffic import count_dequeued

if TYPE_CHECKING:
    from conveyor.server.store.async_pg import AsyncPg


@dataclass(frozen=True)
class Popped:
    task: str
    queue: str
    added: float  # when the entry was added (epoch seconds)
    avoid: str | None = None  # the worker the entry was held back from (a retry's): a give-back keeps it so


def pop(conn: Connection, queue_ids: list[str], *, runner: str | None, worker: str | None = None,
        elsewhere_sec: float = 0.0) -> Popped | None:
    """Take the head entry of the first non-empty queue (in the given order), atomically, and record its delivery.

    The task itself is not read: every status change that takes a task out of `queued` (stop, dequeue, reset,
    delete) removes its entries in the same transaction, so a popped entry always names a queued task. `runner`
    (the popping access key) may then report on the task. `worker` (the popping worker, when it says) skips an entry
    that a retry put back after a failure on it, for `elsewhere_sec` after the retry."""
    skip = {"w": worker, "since": time.time() - elsewhere_sec}
    for queue_id in queue_ids:
        if conn.dialect.name == "postgresql":  # one statement, one round trip
            params = {"q": queue_id, "d": time.time(), "runner": runner, **skip}
            row = sql.run(conn, "pop_and_deliver", params).fetchone()
            if row is None:
                continue
            task_id, added, avoid = row
        else:  # SQLite has no data-modifying CTEs; under BEGIN IMMEDIATE three local statements cost little
            row = sql.run(conn, "pop", {"q": queue_id, **skip}).fetchone()
            if row is None:
                continue
            task_id, added, avoid = row
            if runner is not None:
                sql.run(conn, "set_runner", {"id": task_id, "runner": runner, "w": worker})
            record_delivery(conn, task_id, queue_id, added, avoid)
        count_dequeued(queue_id)
        return Popped(task_id, queue_id, added, avoid)
    return None


async def pop_on_loop(pg: AsyncPg, queue_ids: list[str], *, runner: str | None, worker: str | None = None,
                      elsewhere_sec: float = 0.0) -> Popped | None:
    """`pop` on PostgreSQL's event-loop connections (store/async_pg.py): one statement per queue, shared by the
    concurrent pops of that queue."""
    from conveyor.server.store.async_pg import PopRequest  # psycopg: only a PostgreSQL server loads it

    request = PopRequest(runner=runner, worker=worker, since=time.time() - elsewhere_sec)
    for queue_id in queue_ids:
        popped = await pg.pop(queue_id, request)
        if popped is not None:
            count_dequeued(queue_id)
            return Popped(popped[0], queue_id, popped[1], popped[2])
    return None


def held_back_until(conn: Connection, queue_ids: list[str], worker: str, elsewhere_sec: float) -> float | None:
    """When the first entry of these queues held back from `worker` (a retry's) may go to it (epoch seconds), or None
    when none is."""
    e = s.queue_entries.c
    since = time.time() - elsewhere_sec
    first = conn.execute(select(func.min(e.added)).where(e.queue.in_(queue_ids), e.avoid == worker,
                                                         e.added >= since)).scalar()
    return None if first is None else float(first) + elsewhere_sec


async def held_back_until_on_loop(pg: AsyncPg, queue_ids: list[str], worker: str, elsewhere_sec: float
                                  ) -> float | None:
    """`held_back_until` on PostgreSQL's event-loop connections."""
    rows = await pg.fetch("held_back", {"ids": queue_ids, "w": worker, "since": time.time() - elsewhere_sec})
    first = rows[0][0] if rows else None
    return None if first is None else float(first) + elsewhere_sec


def give_back(conn: Connection, popped: Popped) -> None:
    """A pop whose answer could not be handed over: the entry goes back to the front of its queue as it was (when it
    was added, and the worker it is held back from)."""
    return_delivery(conn, popped.task, popped.queue, popped.added, popped.avoid)


def runner_of(conn: Connection, task_id: str) -> str | None:
    """The access key that pulled the task's run (tasks.runner)."""
    row = sql.run(conn, "get_runner", {"id": task_id}).fetchone()
    return row[0] if row else None


def hand_back(conn: Connection, task_id: str, queue_id: str) -> bool:
    """A worker puts back a task it popped (a daemon that stopped taking work): if the task's delivery came from
    `queue_id`, its entry goes back to the front as it was, as `give_back` puts it. False when there is no such
    delivery: none was made from that queue, or the sweep of unstarted deliveries claimed it first (both claim it by
    deleting it, so that only one of them puts the task back)."""
    d = s.deliveries.c
    claim = delete(s.deliveries).where(d.task == task_id, d.queue == queue_id).returning(d.added, d.avoid)
    row = conn.execute(claim).first()
    if row is None:
        return False
    add_entry(conn, queue_id, task_id, front=True, avoid=row.avoid, added=row.added)
    return True


def stale(conn: Connection, older_than: float) -> list[tuple[str, float]]:
    """(task, delivered) of the deliveries made before `older_than` (epoch seconds) and not yet acknowledged."""
    d = s.deliveries.c
    return [(r.task, r.delivered) for r in conn.execute(select(d.task, d.delivered).where(d.delivered < older_than))]


def requeue(conn: Connection, task_id: str, delivered: float) -> str | None:
    """Put back at the front of its queue a task whose delivery (made at `delivered`) was never acknowledged, if it
    is still `queued` and in no queue; returns that queue, or None when there was nothing to put back.

    The delivery row is claimed by deleting it: of several server processes sweeping, one puts the task back."""
    d = s.deliveries.c
    claim = delete(s.deliveries).where(d.task == task_id, d.delivered == delivered).returning(d.queue, d.added,
                                                                                               d.avoid)
    row = conn.execute(claim).first()
    if row is None:
        return None
    doc = get_task(conn, task_id, lock=True)
    if not doc or doc.get("status") != TaskStatus.queued:
        return None
    if conn.execute(select(s.queue_entries.c.seq).where(s.queue_entries.c.task == task_id)).first():
        return None  # its client put it back itself (the agent does when it pops while draining)
    if get_queue(conn, row.queue) is None:  # its queue is gone
        back_to_before_enqueue(conn, task_id, "")
        return None
    add_entry(conn, row.queue, task_id, front=True, added=row.added, avoid=row.avoid)  # as it was: a retry's hold too
    return str(row.queue)
