"""The `workers` service: registration with a timeout, status reports, stats history, runtime properties."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.protocol.worker_state import STATE_FIELD, STATE_REASON_FIELD
from conveyor.server.call import Call
from conveyor.server.codec import Document, iso, loads, now, to_epoch
from conveyor.server.model import forcing, worker_stats, workers
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
                       state=(call.str(STATE_FIELD), call.str(STATE_REASON_FIELD)), stats_time=_stats_time(call))
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


MAX_POINTS = 20_000  # intervals a stats range may ask for; more is a 400 (a week at 30 s is 20160)


def _range(call: Call) -> tuple[float, float, float]:
    to_date = call.float("to_date") or now()
    from_date = call.float("from_date")
    if from_date is None:
        from_date = to_date - 3600
    interval = call.float("interval") or 60
    if interval < 1:
        raise errors.validation_error("Validation error: 'interval' must be at least 1 (seconds)")
    if from_date > to_date:
        raise errors.validation_error("Validation error: 'from_date' must not be after 'to_date'")
    if (to_date - from_date) / interval > MAX_POINTS:
        raise errors.validation_error(
            f"Validation error: {to_date - from_date:.0f} s at an interval of {interval:g} s is more than "
            f"{MAX_POINTS} points: ask for a longer interval")
    return from_date, to_date, interval


def _bucket(timestamp: float, from_date: float, interval: float) -> int:
    return int(from_date + ((timestamp - from_date) // interval) * interval)


def _stats_time(call: Call) -> float | None:
    """When the reported stats were taken: the report's `timestamp` (ms, or seconds as the schema says), if it is
    plausible (within the history kept and not in the future); else the server's clock."""
    stamp = call.body.get("timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp):
        return None  # the stats are still worth keeping, at the server's time
    seconds = stamp / 1000 if stamp > 1e11 else stamp
    ts = now()
    if ts - call.state.settings.worker_stats_keep_days * 86400 < seconds <= ts + 60:
        return min(seconds, ts)
    return None


@endpoint("workers.get_activity_report")
def get_activity_report(call: Call) -> dict[str, Any]:
    """How many workers reported (total) and how many of them ran a task (active) per interval, every interval of
    the range (0 where none)."""
    from_date, to_date, interval = _range(call)
    total: dict[int, set[str]] = {}
    active: dict[int, set[str]] = {}
    with call.store.read() as conn:
        resolution = worker_stats.tier(from_date, interval, now())
        for sample in worker_stats.samples(conn, from_date, to_date, None, resolution=resolution, with_stats=False):
            bucket = _bucket(sample.timestamp, from_date, interval)
            total.setdefault(bucket, set()).add(sample.worker)
            if sample.active:
                active.setdefault(bucket, set()).add(sample.worker)
    dates = [_bucket(from_date + i * interval, from_date, interval)
             for i in range(int((to_date - from_date) // interval) + 1)]
    return {"total": {"dates": dates, "counts": [len(total.get(d, ())) for d in dates]},
            "active": {"dates": dates, "counts": [len(active.get(d, ())) for d in dates]}}


@endpoint("workers.get_metric_keys")
def get_metric_keys(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        keys = worker_stats.metric_keys(conn, call.str_list("worker_ids"))
    return {"categories": worker_stats.categories(keys)}


def _items(call: Call) -> list[tuple[str, str]]:
    """(key, aggregation) pairs asked for, in order, each once."""
    items = call.list("items") or [{"key": k, "category": "avg"} for k in ("cpu_usage", "memory_used")]
    pairs: list[tuple[str, str]] = []
    for item in items:
        key = item.get("key") if isinstance(item, dict) else None
        category = (item.get("category") or "avg") if isinstance(item, dict) else None
        if not isinstance(key, str) or category not in worker_stats.AGGREGATIONS:
            raise errors.validation_error(
                "Validation error: each of 'items' must be an object with a string 'key' (a machine stat, e.g. "
                f"cpu_usage) and a 'category' of {', '.join(worker_stats.AGGREGATIONS)}; got {item!r}")
        if (key, category) not in pairs:
            pairs.append((key, category))
    return pairs


@endpoint("workers.get_stats", offload=True)
def get_stats(call: Call) -> dict[str, Any]:
    """Machine stats per worker and interval, as min, max and avg of the reports (and of the folded buckets) that
    fall in it; with `split_by_variant`, one series per CPU core or GPU (variant "0", "1", ...; "total" for a
    single number), else the variants together."""
    from_date, to_date, interval = _range(call)
    pairs = _items(call)
    keys = {key for key, _ in pairs}
    split = call.bool("split_by_variant")
    # worker -> (metric, variant) -> bucket -> [min, max, sum, count]
    series: dict[str, dict[tuple[str, str], dict[int, list[float]]]] = {}
    with call.store.read() as conn:
        resolution = worker_stats.tier(from_date, interval, now())
        for sample in worker_stats.samples(conn, from_date, to_date, call.str_list("worker_ids"),
                                           resolution=resolution):
            bucket = _bucket(sample.timestamp, from_date, interval)
            for metric in keys & sample.stats.keys():
                for variant, (low, high, total, count) in sample.stats[metric].items():
                    at = series.setdefault(sample.worker, {}).setdefault((metric, variant if split else ""), {})
                    old = at.get(bucket)
                    at[bucket] = ([low, high, total, count] if old is None else
                                  [min(old[0], low), max(old[1], high), old[2] + total, old[3] + count])
    listed = []
    for worker in sorted(series):
        out = []
        for (metric, variant), buckets in sorted(series[worker].items(),
                                                 key=lambda kv: (kv[0][0], _variant_order(kv[0][1]))):
            dates = sorted(buckets)
            entry: dict[str, Any] = {"metric": metric, "dates": dates, "stats": [
                {"aggregation": category, "values": [_aggregate(buckets[d], category) for d in dates]}
                for key, category in pairs if key == metric]}
            if split:
                entry["variant"] = variant
            out.append(entry)
        listed.append({"worker": worker, "metrics": out})
    return {"workers": listed}


def _variant_order(variant: str) -> tuple[int, str]:
    return (int(variant), "") if variant.isdigit() else (-1, variant)


def _aggregate(summary: list[float], category: str) -> float:
    low, high, total, count = summary
    return {"min": low, "max": high}.get(category, total / count if count else 0.0)
