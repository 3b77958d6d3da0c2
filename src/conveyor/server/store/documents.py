"""Reading and writing the JSON documents of tasks, queues and projects, with their indexed columns in step."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from conveyor.protocol.status import TaskStatus
from conveyor.protocol.task_types import DEFAULT_TASK_TYPE
from conveyor.server.codec import dumps, iso, loads, to_epoch
from conveyor.server.store import known_docs, sql
from conveyor.server.store import schema as s
from conveyor.server.traffic import count_enqueued


def task_columns(doc: dict[str, Any]) -> dict[str, Any]:
    execution = doc.get("execution") or {}
    return {
        "name": doc.get("name") or "",
        "status": doc.get("status") or TaskStatus.created.value,
        "type": doc.get("type") or DEFAULT_TASK_TYPE.value,
        "project": doc.get("project"),
        "parent": doc.get("parent"),
        "user_id": doc.get("user"),
        "queue": execution.get("queue"),
        "last_worker": doc.get("last_worker"),
        "tags": dumps(doc.get("tags") or []),
        "system_tags": dumps(doc.get("system_tags") or []),
        "created": to_epoch(doc.get("created")) or time.time(),
        "last_update": to_epoch(doc.get("last_update")) or time.time(),
        "started": to_epoch(doc.get("started")),
        "completed": to_epoch(doc.get("completed")),
        "status_changed": to_epoch(doc.get("status_changed")),
        "last_iteration": int(doc.get("last_iteration") or 0),
        "doc": dumps(doc),
    }


def get_task(conn: Connection, task_id: str, *, lock: bool = False) -> dict[str, Any] | None:
    row = sql.run(conn, "get_task_locked" if lock else "get_task", {"id": task_id}).fetchone()
    if row is None:
        return None
    _known(conn, task_id, row[0])
    return loads(row[0])


def insert_task(conn: Connection, doc: dict[str, Any]) -> None:
    columns = task_columns(doc)
    sql.run(conn, "insert_task", {"id": doc["id"], **columns})
    _known(conn, doc["id"], columns["doc"])


def save_task(conn: Connection, doc: dict[str, Any], *, forget_runner: bool = False) -> None:
    """Write the task back; `forget_runner`: whoever pulled its last run may no longer report on it."""
    columns = task_columns(doc)
    sql.run(conn, "save_task_unrun" if forget_runner else "save_task", {"id": doc["id"], **columns})
    _known(conn, doc["id"], columns["doc"])


def _known(conn: Connection, task_id: str, text: str) -> None:
    """PostgreSQL's enqueue saves a task it knows in one statement (known_docs.py); SQLite's reads cost nothing."""
    if conn.dialect.name == "postgresql":
        known_docs.TASKS.remember(task_id, text)


def get_queue(conn: Connection, queue_id: str) -> dict[str, Any] | None:
    row = sql.run(conn, "get_queue", {"id": queue_id}).fetchone()
    return loads(row[0]) if row else None


def queue_columns(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": doc["name"],
        "created": to_epoch(doc.get("created")) or time.time(),
        "last_update": to_epoch(doc.get("last_update")) or time.time(),
        "tags": dumps(doc.get("tags") or []),
        "system_tags": dumps(doc.get("system_tags") or []),
        "doc": dumps(doc),
    }


def add_entry(conn: Connection, queue_id: str, task_id: str, *, front: bool = False, avoid: str | None = None,
              added: float | None = None) -> float:
    """Append (or prepend) an entry; on PostgreSQL the commit also NOTIFYs waiting servers. `avoid`: a worker that
    skips the entry for a while (a retry's, after a failure on that worker), until `added` (default now) plus
    conveyor.server.retry_elsewhere_sec."""
    added = time.time() if added is None else added
    sql.run(conn, "add_entry_front" if front else "add_entry_back",
            {"q": queue_id, "t": task_id, "a": added, "v": avoid})
    count_enqueued(queue_id)
    return added


def remove_entries(conn: Connection, task_id: str, queue_id: str | None = None) -> int:
    """Remove a task's entries (of one queue, or of all and its pending delivery too); returns the entries removed."""
    query = delete(s.queue_entries).where(s.queue_entries.c.task == task_id)
    if queue_id:
        query = query.where(s.queue_entries.c.queue == queue_id)
    else:
        sql.run(conn, "forget_delivery", {"t": task_id})
    return conn.execute(query).rowcount or 0


def record_delivery(conn: Connection, task_id: str, queue_id: str, added: float, avoid: str | None) -> None:
    """A popped entry, kept until its task leaves `queued`; an unacknowledged one is put back by the sweep."""
    sql.run(conn, "record_delivery", {"t": task_id, "q": queue_id, "a": added, "d": time.time(), "v": avoid})


def return_delivery(conn: Connection, task_id: str, queue_id: str, added: float, avoid: str | None) -> None:
    """A popped entry whose answer did not reach its client goes back to the front of its queue, as it was."""
    sql.run(conn, "forget_delivery", {"t": task_id})
    add_entry(conn, queue_id, task_id, front=True, avoid=avoid, added=added)


def entries_of(conn: Connection, queue_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The entries of several queues in queue order, as ClearML lists them in `queue.entries`."""
    result: dict[str, list[dict[str, Any]]] = {qid: [] for qid in queue_ids}
    if not queue_ids:
        return result
    rows = conn.execute(
        select(s.queue_entries.c.queue, s.queue_entries.c.task, s.queue_entries.c.added)
        .where(s.queue_entries.c.queue.in_(queue_ids))
        .order_by(s.queue_entries.c.queue, s.queue_entries.c.position, s.queue_entries.c.seq)
    ).all()
    for row in rows:
        result[row.queue].append({"task": row.task, "added": iso(row.added)})
    return result
