"""The `queues` service: queue documents, their ordered entries, and the atomic (optionally long-polled) pop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import delete, func, select, update

from conveyor.protocol import errors
from conveyor.protocol.ids import new_id
from conveyor.server import query as q
from conveyor.server.call import Call, iso, loads, now
from conveyor.server.ownership import require_admin, require_task_owner
from conveyor.server.services import endpoint
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.documents import (add_entry, entries_of, get_queue, get_task, queue_columns,
                                             record_delivery, return_delivery)

ORDER_COLUMNS = {"id": s.queues.c.id, "name": s.queues.c.name, "created": s.queues.c.created,
                 "last_update": s.queues.c.last_update}


def resolve_queue(conn: Any, queue: str) -> str:
    """A queue id, or failing that an exact (case-insensitive) name; else 400/701 as the reference answers."""
    if sql.run(conn, "queue_exists", {"id": queue}).fetchone():
        return queue
    rows = conn.execute(select(s.queues.c.id).where(func.lower(s.queues.c.name) == queue.lower())).all()
    if len(rows) == 1:
        return rows[0][0]
    raise errors.invalid_queue_id(queue)


def _create(conn: Any, call: Call, name: str, tags: list[str], system_tags: list[str]) -> str:
    if conn.execute(select(s.queues.c.id).where(func.lower(s.queues.c.name) == name.lower())).first():
        raise errors.queue_exists(name)
    stamp = iso(now())
    doc = {"id": new_id(), "name": name, "user": call.user, "company": call.identity.company if call.identity else "",
           "created": stamp, "last_update": stamp, "tags": tags, "system_tags": system_tags, "metadata": {}}
    conn.execute(s.queues.insert().values(id=doc["id"], **queue_columns(doc)))
    return doc["id"]


def default_queue_id(conn: Any) -> str:
    row = conn.execute(select(s.queues.c.id).where(s.queues.c.system_tags.like('%"default"%')).order_by(s.queues.c.created)).first()
    if row:
        return row[0]
    raise errors.no_default_queue()


def ensure_default_queue(conn: Any, user: str = "") -> str:
    """The reference server keeps a queue named `default` with the system tag `default`; so do we."""
    try:
        return default_queue_id(conn)
    except errors.ApiError:
        pass
    row = conn.execute(select(s.queues.c.id, s.queues.c.doc).where(func.lower(s.queues.c.name) == "default")).first()
    if row:
        doc = loads(row.doc)
        doc["system_tags"] = sorted(set(doc.get("system_tags") or []) | {"default"})
        conn.execute(update(s.queues).where(s.queues.c.id == row.id).values(**queue_columns(doc)))
        return row.id
    stamp = iso(now())
    doc = {"id": new_id(), "name": "default", "user": user, "company": "", "created": stamp, "last_update": stamp,
           "tags": [], "system_tags": ["default"], "metadata": {}}
    conn.execute(s.queues.insert().values(id=doc["id"], **queue_columns(doc)))
    return doc["id"]


def _load(conn: Any, queue_id: str | None) -> dict[str, Any]:
    if not queue_id:
        raise errors.missing_field("queue")
    doc = get_queue(conn, queue_id)
    if doc is None:
        raise errors.invalid_queue_id(queue_id)
    return doc


def _with_entries(conn: Any, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries = entries_of(conn, [d["id"] for d in docs])
    for doc in docs:
        doc["entries"] = entries[doc["id"]]
    return docs


@endpoint("queues.create")
def create(call: Call) -> dict[str, Any]:
    name = call.str("name", required=True)
    with call.store.write() as conn:
        return {"id": _create(conn, call, name, call.str_list("tags") or [], call.str_list("system_tags") or [])}


@endpoint("queues.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"queue": _with_entries(conn, [_load(conn, call.str("queue", required=True))])[0]}


@endpoint("queues.get_all", aliases=("queues.get_all_ex",), offload=True)
def get_all(call: Call) -> dict[str, Any]:
    c = s.queues.c
    query = select(c.doc)
    ids = call.str_list("id")
    if ids is not None:
        query = query.where(c.id.in_(ids))
    name = call.str("name")
    if name:
        query = query.where(q.name_filter(call, c.name, name))
    for field, column in (("tags", c.tags), ("system_tags", c.system_tags)):
        values = call.str_list(field)
        if values:
            clause = q.tags_filter(column, values)
            if clause is not None:
                query = query.where(clause)
    if ids is None:
        hidden = q.hidden_filter(call, c.system_tags)
        if hidden is not None:
            query = query.where(hidden)
    query = q.apply_order(call, query, ORDER_COLUMNS, ["name"])
    query, extra = q.apply_paging(call, query)
    only = call.str_list("only_fields")
    with call.store.read_apart() as conn:
        docs = [loads(r[0]) for r in q.fetch(call, conn, query)]
        if not only or any(f.split(".")[0] == "entries" for f in only):
            _with_entries(conn, docs)
    return {"queues": [q.project(d, only) for d in docs], **extra}


@endpoint("queues.get_default")
def get_default(call: Call) -> dict[str, Any]:
    with call.store.write() as conn:
        queue_id = ensure_default_queue(conn, call.user)
        doc = get_queue(conn, queue_id) or {}
    return {"id": queue_id, "name": doc.get("name")}


@endpoint("queues.update")
def update_queue(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.write() as conn:
        doc = _load(conn, queue_id)
        require_admin(call, "change a queue")
        fields: dict[str, Any] = {}
        name = call.str("name")
        if name and name.lower() != doc["name"].lower():
            if conn.execute(select(s.queues.c.id).where(func.lower(s.queues.c.name) == name.lower())).first():
                raise errors.queue_exists(name)
            fields["name"] = name
        for key in ("tags", "system_tags"):
            if call.body.get(key) is not None:
                fields[key] = call.str_list(key)
        if call.dict("metadata") is not None:
            fields["metadata"] = call.dict("metadata")
        doc.update(fields)
        doc["last_update"] = iso(now())
        conn.execute(update(s.queues).where(s.queues.c.id == queue_id).values(**queue_columns(doc)))
    return {"updated": 1 if fields else 0, "fields": fields}


@endpoint("queues.delete")
def delete_queue(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.write() as conn:
        _load(conn, queue_id)
        require_admin(call, "delete a queue")
        count = conn.execute(select(func.count()).where(s.queue_entries.c.queue == queue_id)).scalar() or 0
        if count and not call.bool("force"):
            raise errors.queue_not_empty(queue_id)
        for (task_id,) in conn.execute(select(s.queue_entries.c.task).where(s.queue_entries.c.queue == queue_id)).all():
            _requeued_to_created(conn, task_id, call.user)
        conn.execute(delete(s.queue_entries).where(s.queue_entries.c.queue == queue_id))
        conn.execute(delete(s.queues).where(s.queues.c.id == queue_id))
    call.state.known_queues.discard(queue_id)
    return {"deleted": 1}


def _requeued_to_created(conn: Any, task_id: str, user: str) -> None:
    """A task whose queue entry goes away without being pulled goes back to its status before the enqueue."""
    from conveyor.server.services.tasks import set_status

    doc = get_task(conn, task_id, lock=True)
    if doc and doc.get("status") == "queued":
        doc.get("execution", {}).pop("queue", None)
        set_status(conn, doc, doc.get("enqueue_status") or "created", force=True, user=user, reason="dequeued")


@endpoint("queues.add_task")
def add_task(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        _load(conn, queue_id)
        doc = get_task(conn, task_id)
        if doc is None:
            raise errors.invalid_task_id(task_id)
        # A worker hands back what it pulled while stopping: the runner may.
        require_task_owner(call, conn, doc, "enqueue it", as_runner=True)
        add_entry(conn, queue_id, task_id)
    call.state.wake([queue_id])
    return {"added": 1}


@endpoint("queues.remove_task")
def remove_task(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        _load(conn, queue_id)
        doc = get_task(conn, task_id)
        if doc is not None:
            require_task_owner(call, conn, doc, "dequeue it")
        removed = conn.execute(
            delete(s.queue_entries).where(s.queue_entries.c.queue == queue_id, s.queue_entries.c.task == task_id)
        ).rowcount
        if removed and call.bool("update_task_status", True):
            _requeued_to_created(conn, task_id, call.user)
    return {"removed": removed}


@endpoint("queues.clear_queue")
def clear_queue(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.write() as conn:
        _load(conn, queue_id)
        require_admin(call, "clear a queue")
        tasks = [r[0] for r in conn.execute(select(s.queue_entries.c.task).where(s.queue_entries.c.queue == queue_id)).all()]
        conn.execute(delete(s.queue_entries).where(s.queue_entries.c.queue == queue_id))
        for task_id in tasks:
            _requeued_to_created(conn, task_id, call.user)
    return {"removed_tasks": tasks}


@endpoint("queues.peek_task")
def peek_task(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.read() as conn:
        _load(conn, queue_id)
        entries = entries_of(conn, [queue_id])[queue_id]
    return {"task": entries[0]["task"]} if entries else {}


@endpoint("queues.get_num_entries")
def get_num_entries(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.read() as conn:
        _load(conn, queue_id)
        count = conn.execute(select(func.count()).where(s.queue_entries.c.queue == queue_id)).scalar()
    return {"num": count or 0}


def _move(call: Call, where: str) -> dict[str, Any]:
    """Reorder one entry; positions of the queue are renumbered 0..n-1."""
    queue_id = call.str("queue", required=True)
    task_id = call.str("task", required=True)
    count = call.int("count", 1, minimum=1) or 1
    e = s.queue_entries.c
    with call.store.write() as conn:
        _load(conn, queue_id)
        doc = get_task(conn, task_id)
        if doc is not None:
            require_task_owner(call, conn, doc, "move it in its queue", as_runner=True)
        rows = conn.execute(select(e.seq, e.task).where(e.queue == queue_id).order_by(e.position, e.seq)).all()
        seqs = [r.seq for r in rows]
        tasks = [r.task for r in rows]
        if task_id not in tasks:
            raise errors.bad_request(f"Task {task_id} is not in queue {queue_id}", 703)
        index = tasks.index(task_id)
        target = {"front": 0, "back": len(tasks) - 1, "forward": max(0, index - count),
                  "backward": min(len(tasks) - 1, index + count)}[where]
        seq = seqs.pop(index)
        seqs.insert(target, seq)
        for position, entry_seq in enumerate(seqs):
            conn.execute(update(s.queue_entries).where(e.seq == entry_seq).values(position=float(position)))
    return {"position": target}


@endpoint("queues.move_task_to_front")
def move_task_to_front(call: Call) -> dict[str, Any]:
    return _move(call, "front")


@endpoint("queues.move_task_to_back")
def move_task_to_back(call: Call) -> dict[str, Any]:
    return _move(call, "back")


@endpoint("queues.move_task_forward")
def move_task_forward(call: Call) -> dict[str, Any]:
    return _move(call, "forward")


@endpoint("queues.move_task_backward")
def move_task_backward(call: Call) -> dict[str, Any]:
    return _move(call, "backward")


# --- the pop ---------------------------------------------------------------------------------------------------------
def _known_queues(call: Call, queue_ids: list[str]) -> None:
    known = call.state.known_queues
    missing = [qid for qid in queue_ids if qid not in known]
    if not missing:
        return
    with call.store.read() as conn:
        found = {r[0] for r in conn.execute(select(s.queues.c.id).where(s.queues.c.id.in_(missing))).all()}
    for qid in missing:
        if qid not in found:
            raise errors.invalid_queue_id(qid)
    known.update(found)


def pop(call: Call, queue_ids: list[str]) -> dict[str, Any] | None:
    """Take the head entry of the first non-empty queue (in the given order), atomically.

    The task itself is not read: every status change that takes a task out of `queued` (stop, dequeue, reset,
    delete) removes its entries in the same transaction, so a popped entry always names a queued task. The pop is
    recorded as a delivery in the same transaction, so that an answer lost on the way puts the task back."""
    runner = call.identity.access_key if call.identity is not None else None  # it may report on what it pulls
    one_statement = call.store.dialect == "postgresql"
    with call.store.write() as conn:
        for queue_id in queue_ids:
            if one_statement:
                row = sql.run(conn, "pop_and_deliver", {"q": queue_id, "d": time.time(), "runner": runner}).fetchone()
                if row is None:
                    continue
                task_id, added = row
            else:  # SQLite has no data-modifying CTEs; under BEGIN IMMEDIATE three local statements cost little
                row = sql.run(conn, "pop", {"q": queue_id}).fetchone()
                if row is None:
                    continue
                task_id, added = row
                if runner is not None:
                    sql.run(conn, "set_runner", {"id": task_id, "runner": runner})
                record_delivery(conn, task_id, queue_id, added)
            answer: dict[str, Any] = {"entry": {"task": task_id, "added": iso(added)}, "queue": queue_id}
            if call.bool("get_task_info"):
                doc = get_task(conn, task_id) or {}
                answer["task_info"] = {"company": doc.get("company", ""), "user": doc.get("user", "")}
            return answer
    return None


async def _give_back(call: Call, answer: dict[str, Any]) -> None:
    def put_back() -> None:
        with call.store.write() as conn:
            return_delivery(conn, answer["entry"]["task"], answer["queue"])
        call.state.wake([answer["queue"]])

    if call.store.inline:
        put_back()
    else:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(put_back)


@endpoint("queues.get_next_task")
async def get_next_task(call: Call) -> dict[str, Any]:
    """ClearML's pop; our addition: `wait` (seconds) holds the request until an entry arrives, and `queues` (a list,
    in priority order) pops from the first non-empty one."""
    queue_ids = call.str_list("queues") or []
    single = call.str("queue")
    if single:
        queue_ids = [single] + [qid for qid in queue_ids if qid != single]
    if not queue_ids:
        raise errors.missing_field("queue")
    wait = min(call.float("wait", 0.0) or 0.0, call.state.settings.long_poll_max_sec)
    inline = call.store.inline

    async def attempt() -> dict[str, Any] | None:
        if inline:
            _known_queues(call, queue_ids)
            return pop(call, queue_ids)
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(_known_queues, call, queue_ids)
        return await run_in_threadpool(pop, call, queue_ids)

    if wait <= 0:
        return await attempt() or {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    gone = call.disconnected  # completes when the waiting client closes its connection
    while True:
        with call.state.signals.listen(queue_ids) as woken:
            if (gone is not None and gone.done()) or call.state.signals.closing:
                return {}  # nobody to hand an entry to, or the server is stopping: leave it in the queue
            answer = await attempt()
            if answer:
                if gone is not None:
                    # A disconnect the server has seen but not yet passed to `gone` lands within one loop turn.
                    await asyncio.sleep(0)
                if gone is not None and gone.done():
                    await _give_back(call, answer)  # the waiter left while we popped: keep the task queued
                    return {}
                return answer
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            await asyncio.wait([woken, gone] if gone is not None else [woken], timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
            if (not woken.done() and loop.time() >= deadline) or call.state.signals.closing:
                return {}


def requeue_unstarted(state: Any) -> list[str]:
    """Put back at the front of its queue each task popped more than `unstarted_requeue_sec` ago that is still
    `queued` and in no queue: the answer that carried it never reached a client that would start it (the client
    gave up as it was written, or died). Agents start a task at once, which acknowledges the delivery.
    Returns the tasks put back."""
    limit = state.settings.unstarted_requeue_sec
    if limit <= 0:
        return []
    d = s.deliveries.c
    with state.store.read() as conn:
        stale = conn.execute(select(d.task, d.delivered).where(d.delivered < now() - limit)).all()
    requeued: list[str] = []
    woken: set[str] = set()
    for task_id, delivered in stale:
        with state.store.write() as conn:
            # Claiming the row by deleting it: of several server processes sweeping, one puts the task back.
            row = conn.execute(delete(s.deliveries).where(d.task == task_id, d.delivered == delivered)
                               .returning(d.queue)).first()
            if row is None:
                continue
            doc = get_task(conn, task_id, lock=True)
            if not doc or doc.get("status") != "queued":
                continue
            if conn.execute(select(s.queue_entries.c.seq).where(s.queue_entries.c.task == task_id)).first():
                continue  # its client put it back itself (the agent does when it pops while draining)
            if get_queue(conn, row.queue) is None:
                _requeued_to_created(conn, task_id, "")
                continue
            add_entry(conn, row.queue, task_id, front=True)
            woken.add(row.queue)
            requeued.append(task_id)
    state.wake(woken)
    return requeued
