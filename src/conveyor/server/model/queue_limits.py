"""A queue's entry limit (`max_entries`, a Conveyor addition): an enqueue onto a full queue is refused."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.server.codec import Document
from conveyor.server.store import schema as s
from conveyor.server.store.documents import get_queue

QUEUE_FULL = 706  # the subcode of the refusal


def require_room(conn: Connection, queue_id: str, doc: Document | None = None) -> None:
    """Refuse an enqueue onto a queue that holds its `max_entries` already (none or 0: no limit). `doc`: the queue's
    document, when the caller has read it in this transaction. Enqueues already under way when a limit is first set
    may still land past it (they read the queue without a limit); from then on the limit holds exactly."""
    if doc is None:
        doc = get_queue(conn, queue_id) or {}
    if not doc.get("max_entries"):
        return  # no limit: nothing to count, and no lock that would make every enqueue onto the queue wait in line
    # The queue's row is locked (PostgreSQL) and read again, so that two enqueues cannot both count room for one
    # entry, and a limit changed meanwhile counts.
    conn.execute(select(s.queues.c.id).where(s.queues.c.id == queue_id).with_for_update())
    doc = get_queue(conn, queue_id) or {}
    limit = doc.get("max_entries")
    if not limit:
        return
    held = int(conn.execute(select(func.count()).where(s.queue_entries.c.queue == queue_id)).scalar() or 0)
    if held >= limit:
        raise errors.bad_request(
            f"Queue {doc.get('name') or queue_id} is full: it holds its limit of {limit} task(s) (max_entries); "
            "wait until workers pull some, or raise the queue's max_entries", QUEUE_FULL)
