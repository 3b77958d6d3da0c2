"""A queue's entry limit (`max_entries`, a Conveyor addition): an enqueue onto a full queue is refused."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.server.store import schema as s
from conveyor.server.store.documents import get_queue

QUEUE_FULL = 706  # the subcode of the refusal


def require_room(conn: Connection, queue_id: str) -> None:
    """Refuse an enqueue onto a queue that holds its `max_entries` already (none or 0: no limit)."""
    # The queue's row is locked first (PostgreSQL), so that two enqueues cannot both count room for one entry.
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
