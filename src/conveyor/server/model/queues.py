"""Queues: finding one by id or name, the default queue, and their ordered entries."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.protocol.ids import new_id
from conveyor.server.codec import Document, iso, loads, now
from conveyor.server.model.tasks import back_to_before_enqueue
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.documents import entries_of, get_queue, queue_columns

DEFAULT = "default"  # the name and the system tag of the queue an enqueue naming no queue goes to
MOVES = ("front", "back", "forward", "backward")


def resolve_queue(conn: Connection, queue: str) -> str:
    """A queue id, or failing that an exact (case-insensitive) name; else 400/701 as the reference answers."""
    if sql.run(conn, "queue_exists", {"id": queue}).fetchone():
        return queue
    return _by_name(conn, queue)


def _by_name(conn: Connection, queue: str) -> str:
    rows = conn.execute(select(s.queues.c.id).where(func.lower(s.queues.c.name) == queue.lower())).all()
    if len(rows) == 1:
        return str(rows[0][0])
    raise errors.invalid_queue_id(queue)


def queue_to_enqueue_on(conn: Connection, queue: str | None) -> tuple[str, Document]:
    """(id, document) of the queue an enqueue names (an id or a name), or of the default queue when it names none:
    the document is read once, for the entry limit too."""
    if queue:
        doc = get_queue(conn, queue)
        if doc is not None:
            return queue, doc
        queue_id = _by_name(conn, queue)
    else:
        queue_id = default_queue_id(conn)
    doc = get_queue(conn, queue_id)
    if doc is None:  # deleted in between (SQLite serialises writers; PostgreSQL may get here)
        raise errors.invalid_queue_id(queue or queue_id)
    return queue_id, doc


def _tagged_default(conn: Connection) -> str | None:
    row = conn.execute(select(s.queues.c.id).where(s.queues.c.system_tags.like(f'%"{DEFAULT}"%'))
                       .order_by(s.queues.c.created)).first()
    return str(row[0]) if row else None


def default_queue_id(conn: Connection) -> str:
    """The oldest queue tagged `default`: where an enqueue naming no queue goes (400/705 when there is none)."""
    queue_id = _tagged_default(conn)
    if queue_id is None:
        raise errors.no_default_queue()
    return queue_id


def _name_taken(conn: Connection, name: str) -> bool:
    return conn.execute(select(s.queues.c.id).where(func.lower(s.queues.c.name) == name.lower())).first() is not None


def _insert(conn: Connection, name: str, *, user: str, company: str, tags: list[str], system_tags: list[str],
            display_name: str | None = None, max_entries: int | None = None) -> str:
    stamp = iso(now())
    doc: Document = {"id": new_id(), "name": name, "user": user, "company": company, "created": stamp,
                     "last_update": stamp, "tags": tags, "system_tags": system_tags, "metadata": {}}
    if display_name:
        doc["display_name"] = display_name
    if max_entries:
        doc["max_entries"] = max_entries
    conn.execute(s.queues.insert().values(id=doc["id"], **queue_columns(doc)))
    return str(doc["id"])


def create(conn: Connection, name: str, *, user: str, company: str, tags: list[str], system_tags: list[str],
           display_name: str | None = None, max_entries: int | None = None) -> str:
    if _name_taken(conn, name):
        raise errors.queue_exists(name)
    return _insert(conn, name, user=user, company=company, tags=tags, system_tags=system_tags,
                   display_name=display_name, max_entries=max_entries)


def ensure_default_queue(conn: Connection, user: str = "") -> str:
    """The reference server keeps a queue named `default` with the system tag `default`; so do we."""
    tagged = _tagged_default(conn)
    if tagged is not None:
        return tagged
    row = conn.execute(select(s.queues.c.id, s.queues.c.doc).where(func.lower(s.queues.c.name) == DEFAULT)).first()
    if row:
        doc = loads(row.doc)
        doc["system_tags"] = sorted(set(doc.get("system_tags") or []) | {DEFAULT})
        conn.execute(update(s.queues).where(s.queues.c.id == row.id).values(**queue_columns(doc)))
        return str(row.id)
    return _insert(conn, DEFAULT, user=user, company="", tags=[], system_tags=[DEFAULT])


def load(conn: Connection, queue_id: str | None) -> Document:
    if not queue_id:
        raise errors.missing_field("queue")
    doc = get_queue(conn, queue_id)
    if doc is None:
        raise errors.invalid_queue_id(queue_id)
    return doc


def with_entries(conn: Connection, docs: list[Document]) -> list[Document]:
    entries = entries_of(conn, [d["id"] for d in docs])
    for doc in docs:
        doc["entries"] = entries[doc["id"]]
    return docs


def update_queue(conn: Connection, doc: Document, *, name: str | None, tags: list[str] | None,
                 system_tags: list[str] | None, metadata: Document | None, display_name: str | None = None,
                 max_entries: int | None = None) -> Document:
    """Change a queue's name, display name, tags, metadata or entry limit (0: none); returns the fields changed."""
    fields: Document = {}
    if name and name.lower() != doc["name"].lower():
        if _name_taken(conn, name):
            raise errors.queue_exists(name)
        fields["name"] = name
    if display_name is not None:
        fields["display_name"] = display_name
    if max_entries is not None:
        fields["max_entries"] = max_entries or None
    for key, value in (("tags", tags), ("system_tags", system_tags)):
        if value is not None:
            fields[key] = value
    if metadata is not None:
        fields["metadata"] = metadata
    doc.update(fields)
    doc["last_update"] = iso(now())
    conn.execute(update(s.queues).where(s.queues.c.id == doc["id"]).values(**queue_columns(doc)))
    return fields


def tasks_in(conn: Connection, queue_id: str) -> list[str]:
    return [r[0] for r in conn.execute(select(s.queue_entries.c.task).where(s.queue_entries.c.queue == queue_id))]


def count(conn: Connection, queue_id: str) -> int:
    return int(conn.execute(select(func.count()).where(s.queue_entries.c.queue == queue_id)).scalar() or 0)


def clear(conn: Connection, queue_id: str, *, user: str) -> list[str]:
    """Empty a queue; its tasks go back to their status before the enqueue. Returns them."""
    tasks = tasks_in(conn, queue_id)
    conn.execute(delete(s.queue_entries).where(s.queue_entries.c.queue == queue_id))
    for task_id in tasks:
        back_to_before_enqueue(conn, task_id, user)
    return tasks


def delete_queue(conn: Connection, queue_id: str, *, user: str, force: bool) -> None:
    """A queue that still holds tasks only with force (they go back to their status before the enqueue)."""
    if count(conn, queue_id) and not force:
        raise errors.queue_not_empty(queue_id)
    clear(conn, queue_id, user=user)
    conn.execute(delete(s.queues).where(s.queues.c.id == queue_id))


def remove_task(conn: Connection, queue_id: str, task_id: str, *, user: str, update_status: bool) -> int:
    """Take a task's entry out of one queue; returns the entries removed."""
    removed = conn.execute(
        delete(s.queue_entries).where(s.queue_entries.c.queue == queue_id, s.queue_entries.c.task == task_id)
    ).rowcount
    if removed and update_status:
        back_to_before_enqueue(conn, task_id, user)
    return int(removed or 0)


def move(conn: Connection, queue_id: str, task_id: str, where: str, steps: int = 1) -> int:
    """Reorder one entry (`where` one of MOVES); positions of the queue are renumbered 0..n-1. Returns its new one."""
    e = s.queue_entries.c
    rows = conn.execute(select(e.seq, e.task).where(e.queue == queue_id).order_by(e.position, e.seq)).all()
    seqs = [r.seq for r in rows]
    tasks = [r.task for r in rows]
    if task_id not in tasks:
        raise errors.bad_request(f"Task {task_id} is not in queue {queue_id}", 703)
    index = tasks.index(task_id)
    target = {"front": 0, "back": len(tasks) - 1, "forward": max(0, index - steps),
              "backward": min(len(tasks) - 1, index + steps)}[where]
    seq = seqs.pop(index)
    seqs.insert(target, seq)
    for position, entry_seq in enumerate(seqs):
        conn.execute(update(s.queue_entries).where(e.seq == entry_seq).values(position=float(position)))
    return target


def existing(conn: Connection, queue_ids: list[str]) -> set[str]:
    return {r[0] for r in conn.execute(select(s.queues.c.id).where(s.queues.c.id.in_(queue_ids)))}
