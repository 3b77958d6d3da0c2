"""The `workers` service: registration with a timeout, status reports, stats history, runtime properties."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.protocol.worker_state import STATE_FIELD, STATE_REASON_FIELD
from conveyor.server.call import Call
from conveyor.server.codec import Document, iso, loads, now, to_epoch
from conveyor.server.model import forcing, workers
from conveyor.server.ownership import may_change_task
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s
from conveyor.server.store.documents import get_task

MAX_TIMEOUT_SEC = 2**31 - 1  # the workers.timeout column is a 32-bit integer


def _touch(call: Call, conn: Connection, worker: str, timeout: int | None, *, register: bool) -> Document:
    return workers.touch(conn, worker, user=call.user, ip=call.client_ip, timeout=timeout,
                         default_timeout=call.state.settings.worker_timeout_sec, register=register)


def _lists(call: Call, doc: Document) -> None:
    """The queues a worker serves and its tags, as far as the call names them."""
    for key in ("queues", "tags", "system_tags"):
        if call.body.get(key) is not None:
            doc[key] = call.str_list(key)


@endpoint("workers.register")
def register(call: Call) -> dict[str, Any]:
    worker = call.str("worker", required=True)
    timeout = call.int("timeout", minimum=1, maximum=MAX_TIMEOUT_SEC)
    with call.store.write() as conn:
        doc = _touch(call, conn, worker, timeout, register=True)
        _lists(call, doc)
        workers.save(conn, worker, doc)
    return {}


@endpoint("workers.unregister")
def unregister(call: Call) -> dict[str, Any]:
    worker = call.str("worker", required=True)
    with call.store.write() as conn:
        workers.forget(conn, worker)
    return {}


@endpoint("workers.status_report")
def status_report(call: Call) -> dict[str, Any]:
    worker = call.str("worker", required=True)
    task_id = call.str("task")
    queue_id = call.str("queue")
    stats = call.dict("machine_stats")
    with call.store.write() as conn:
        doc = _touch(call, conn, worker, None, register=False)
        _lists(call, doc)
        task = get_task(conn, task_id, lock=True) if task_id else None
        if task is not None and not may_change_task(call, conn, task, as_runner=True):
            task = None  # it reports on a task it may not change: recorded, but the task is not marked as its own
        workers.report(conn, worker, doc, task_id=task_id, queue_id=queue_id, stats=stats,
                       is_daemon=call.bool("is_daemon", True), task=task,
                       state=(call.str(STATE_FIELD), call.str(STATE_REASON_FIELD)))
    return {}


@endpoint("workers.get_all")
def get_all(call: Call) -> dict[str, Any]:
    last_seen = call.int("last_seen", minimum=0)
    tags = set(call.str_list("tags") or [])
    with call.store.read() as conn:
        rows = workers.alive(conn, last_seen)
        queue_ids = ({qid for r in rows for qid in (loads(r.doc).get("queues") or [])}
                     | {r.queue for r in rows if r.queue})
        queue_names = dict(conn.execute(
            select(s.queues.c.id, s.queues.c.name).where(s.queues.c.id.in_(queue_ids))).all())
        counts: dict[str, int] = dict(conn.execute(select(s.queue_entries.c.queue, func.count()).where(
            s.queue_entries.c.queue.in_(queue_ids)).group_by(s.queue_entries.c.queue)).all())
        task_ids = [r.task for r in rows if r.task]
        tasks = {r.id: r for r in conn.execute(select(s.tasks.c.id, s.tasks.c.name, s.tasks.c.last_iteration,
                                                      s.tasks.c.project).where(s.tasks.c.id.in_(task_ids))).all()}
        users = dict(conn.execute(select(s.users.c.id, s.users.c.name)).all())
    listed = []
    for r in rows:
        doc = loads(r.doc)
        if tags and not tags & set(doc.get("tags") or []):
            continue
        entry: dict[str, Any] = {
            "id": r.id, "key": r.id, "ip": r.ip, "register_time": iso(r.register_time),
            "last_activity_time": iso(r.last_seen), "last_report_time": doc.get("last_report_time"),
            "user": {"id": r.user_id, "name": users.get(r.user_id, "")},
            "queues": [{"id": q, "name": queue_names.get(q, ""), "num_tasks": counts.get(q, 0)}
                       for q in doc.get("queues") or []],
            "tags": doc.get("tags") or [], "system_tags": doc.get("system_tags") or [],
        }
        if r.queue:
            entry["queue"] = {"id": r.queue, "name": queue_names.get(r.queue, ""), "num_tasks": counts.get(r.queue, 0)}
        task = tasks.get(r.task) if r.task else None
        if task is not None:
            started = doc.get("task_started")
            entry["task"] = {"id": task.id, "name": task.name, "last_iteration": task.last_iteration,
                             "running_time": int((now() - (to_epoch(started) or now())) * 1000)}
            if task.project:
                entry["project"] = {"id": task.project}
        if doc.get("machine_stats"):
            entry["machine_stats"] = doc["machine_stats"]
        for key in (STATE_FIELD, STATE_REASON_FIELD):  # a Conveyor addition, from the daemon's reports
            if doc.get(key) is not None:
                entry[key] = doc[key]
        listed.append(entry)
    return {"workers": listed}


@endpoint("workers.get_count")
def get_count(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"count": len(workers.alive(conn, call.int("last_seen", minimum=0)))}


@endpoint("workers.set_runtime_properties")
def set_runtime_properties(call: Call) -> dict[str, Any]:
    worker = call.str("worker", required=True)
    props = call.list("runtime_properties") or []
    ts = now()
    with call.store.write() as conn:
        for prop in props:
            if not isinstance(prop, dict) or not isinstance(prop.get("key"), str):
                raise errors.validation_error("Validation error: each runtime property needs a string 'key'")
            expiry = prop.get("expiry")
            if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, (int, float))):
                raise errors.validation_error(
                    f"Validation error: runtime property {prop['key']!r} has expiry {expiry!r}: "
                    "give seconds as a number")
            if expiry is not None and expiry <= 0:  # as ClearML's docs have it: expiry 0 deletes the property
                conn.execute(delete(s.runtime_properties).where(s.runtime_properties.c.worker == worker,
                                                                s.runtime_properties.c.key == prop["key"]))
                continue
            values = {"value": "" if prop.get("value") is None else str(prop["value"]),
                      "expires": ts + float(expiry) if expiry else None}
            upsert = workers.upsert_insert(conn, s.runtime_properties).values(worker=worker, key=prop["key"], **values)
            conn.execute(upsert.on_conflict_do_update(index_elements=["worker", "key"], set_=values))
        forcing.announce(conn, forcing.worker_key(worker))
    call.state.wake([forcing.worker_key(worker)])  # its daemon's long-poll ends: `force` may have changed
    return {}


@endpoint("workers.get_runtime_properties")
def get_runtime_properties(call: Call) -> dict[str, Any]:
    worker = call.str("worker", required=True)
    ts = now()
    c = s.runtime_properties.c
    with call.store.read() as conn:
        rows = conn.execute(select(c.key, c.value, c.expires).where(c.worker == worker).order_by(c.key)).all()
    return {"runtime_properties": [
        {"key": r.key, "value": r.value, **({"expiry": int(r.expires - ts)} if r.expires else {})}
        for r in rows if r.expires is None or r.expires > ts
    ]}


def _range(call: Call) -> tuple[float, float, float]:
    to_date = call.float("to_date") or now()
    from_date = call.float("from_date") or to_date - 3600
    interval = call.float("interval") or 60
    if interval <= 0 or from_date > to_date:
        raise errors.validation_error("from_date must precede to_date and interval must be positive")
    return from_date, to_date, interval


@endpoint("workers.get_activity_report")
def get_activity_report(call: Call) -> dict[str, Any]:
    """How many workers reported (total) and how many of them ran a task (active) per interval."""
    from_date, to_date, interval = _range(call)
    w = s.worker_stats.c
    with call.store.read() as conn:
        rows = conn.execute(select(w.worker, w.timestamp, w.task).where(w.timestamp >= from_date,
                                                                         w.timestamp <= to_date)).all()
    total: dict[int, set[str]] = {}
    active: dict[int, set[str]] = {}
    for r in rows:
        bucket = int(from_date + ((r.timestamp - from_date) // interval) * interval)
        total.setdefault(bucket, set()).add(r.worker)
        if r.task:
            active.setdefault(bucket, set()).add(r.worker)
    dates = sorted(total)
    return {"total": {"dates": dates, "counts": [len(total[d]) for d in dates]},
            "active": {"dates": dates, "counts": [len(active.get(d, ())) for d in dates]}}


@endpoint("workers.get_stats")
def get_stats(call: Call) -> dict[str, Any]:
    """Machine stats per worker, averaged per interval, with min/max/avg as ClearML's charts ask."""
    from_date, to_date, interval = _range(call)
    worker_ids = call.str_list("worker_ids")
    items = call.list("items") or [{"key": k, "category": "avg"} for k in ("cpu_usage", "memory_used")]
    if not all(isinstance(i, dict) and isinstance(i.get("key"), str) and isinstance(i.get("category", "avg"), str)
               for i in items):
        raise errors.validation_error("Validation error: each of 'items' must be an object with a string 'key' "
                                      "(and an optional 'category': avg, min or max)")
    w = s.worker_stats.c
    query = select(w.worker, w.timestamp, w.stats).where(w.timestamp >= from_date, w.timestamp <= to_date)
    if worker_ids:
        query = query.where(w.worker.in_(worker_ids))
    with call.store.read() as conn:
        rows = conn.execute(query.order_by(w.worker, w.seq)).all()
    series: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in rows:
        stats = loads(r.stats) or {}
        bucket = int(from_date + ((r.timestamp - from_date) // interval) * interval)
        for item in items:
            value = stats.get(item.get("key"))
            if isinstance(value, list):
                value = sum(value) / len(value) if value else None
            if isinstance(value, (int, float)):
                series.setdefault(r.worker, {}).setdefault(item["key"], {}).setdefault(bucket, []).append(float(value))
    agg: dict[str, Callable[[list[float]], float]] = {"avg": lambda v: sum(v) / len(v), "min": min, "max": max}
    listed = []
    for worker, metrics in series.items():
        out = []
        for key, buckets in metrics.items():
            dates = sorted(buckets)
            categories = sorted({i.get("category", "avg") for i in items if i.get("key") == key} & set(agg))
            out.append({"metric": key, "dates": dates,
                        "stats": [{"aggregation": c, "values": [agg[c](buckets[d]) for d in dates]}
                                  for c in categories]})
        listed.append({"worker": worker, "metrics": out})
    return {"workers": listed}
