"""The `events` service: logs and metrics of tasks; keeps `last_iteration` and `last_metrics` current."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.server.call import Call
from conveyor.server.codec import INT64_MAX, dumps, iso, loads
from conveyor.server.ownership import require_task_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s
from conveyor.server.store.documents import get_task, save_task

LOG = "log"
SCALAR = "training_stats_scalar"
LEVELS = {"notset", "debug", "verbose", "info", "warn", "warning", "error", "fatal", "critical"}
MAX_BATCH = 500


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - ClearML keys last_metrics by md5 of the names


def storable(text: str) -> str:
    """Text as both databases keep it: PostgreSQL's text cannot hold NUL, so a process that prints one gets the
    visible escape `\\x00` on either database, never a refused batch (and a lost log)."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def _row(event: dict[str, Any], index: int) -> dict[str, Any]:
    """Validate one event; raises ValueError with a message for `errors_info`."""
    if not isinstance(event, dict):
        raise ValueError("an event must be a JSON object")
    task = event.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError("missing 'task'")
    etype = event.get("type") or LOG
    if not isinstance(etype, str):
        raise ValueError("'type' must be a string")
    ts = event.get("timestamp")
    if ts is None:
        ts = int(time.time() * 1000)
    elif not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 <= ts <= INT64_MAX:
        raise ValueError("'timestamp' must be epoch milliseconds")
    client_id = event.get("conveyor_id")
    row: dict[str, Any] = {"task": task, "type": etype, "timestamp": int(ts), "iter": None, "metric": None,
                           "variant": None, "value": None, "level": None, "worker": None, "msg": None, "doc": None,
                           "client_id": client_id if isinstance(client_id, str) and client_id else None}
    worker = event.get("worker")
    row["worker"] = storable(worker) if isinstance(worker, str) else None
    if etype == LOG:
        msg = event.get("msg", "")
        row["msg"] = storable(msg if isinstance(msg, str) else str(msg))
        level = str(event.get("level") or "info").lower()
        row["level"] = level if level in LEVELS else "info"
        return row
    it = event.get("iter")
    if it is not None:
        if not isinstance(it, (int, float)) or isinstance(it, bool) or not -INT64_MAX <= it <= INT64_MAX:
            raise ValueError("'iter' must be an integer")
        row["iter"] = int(it)
    for key in ("metric", "variant"):
        value = event.get(key)
        row[key] = storable(value if isinstance(value, str) else ("" if value is None else str(value)))
    if etype == SCALAR:
        value = event.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError("a scalar event needs a numeric 'value'")
        row["value"] = float(value)
    else:
        rest = {k: v for k, v in event.items() if k not in ("task", "type", "timestamp", "iter", "metric", "variant",
                                                             "worker", "method", "conveyor_id")}
        row["doc"] = dumps(rest)
    return row


def _update_task(doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    iters = [r["iter"] for r in rows if r["iter"] is not None]
    if iters:
        doc["last_iteration"] = max(int(doc.get("last_iteration") or 0), max(iters))
    metrics = doc.setdefault("last_metrics", {})
    for r in rows:
        if r["type"] != SCALAR:
            continue
        entry = metrics.setdefault(_md5(r["metric"]), {}).setdefault(_md5(r["variant"]), {
            "metric": r["metric"], "variant": r["variant"], "min_value": r["value"], "max_value": r["value"],
            "min_value_iteration": r["iter"], "max_value_iteration": r["iter"], "first_value": r["value"],
            "first_value_iteration": r["iter"], "count": 0})
        entry["value"] = r["value"]
        entry["iter"] = r["iter"]
        entry["timestamp"] = r["timestamp"]
        entry["count"] = entry.get("count", 0) + 1
        if r["value"] < entry["min_value"]:
            entry["min_value"], entry["min_value_iteration"] = r["value"], r["iter"]
        if r["value"] > entry["max_value"]:
            entry["max_value"], entry["max_value_iteration"] = r["value"], r["iter"]
    doc["last_update"] = iso(time.time())


@endpoint("events.add_batch")
def add_batch(call: Call) -> dict[str, Any]:
    events = call.body.get("requests")
    if events is None:
        events = call.body.get("events")
    if not isinstance(events, list):
        raise errors.validation_error("events.add_batch needs a list of events (JSON lines or a JSON list)")
    errors_info: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        try:
            rows.append(_row(event, index))
        except ValueError as exc:
            errors_info[str(index)] = str(exc)
    if not rows:
        return {"added": 0, "errors": len(errors_info), "errors_info": errors_info}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    with call.store.write() as conn:
        accepted: list[dict[str, Any]] = []
        fresh: list[dict[str, Any]] = []
        for task_id, task_rows in by_task.items():
            doc = get_task(conn, task_id, lock=True)
            if doc is None:
                errors_info[task_id] = f"Invalid task id: {task_id}"
                continue
            require_task_owner(call, conn, doc, "report events for it", as_runner=True)
            accepted.extend(task_rows)
            task_rows = _not_seen(conn, task_id, task_rows)
            if not task_rows:
                continue
            _update_task(doc, task_rows)
            save_task(conn, doc)
            fresh.extend(task_rows)
        if fresh:
            conn.execute(s.events.insert(), fresh)
    # A retried batch whose events were already stored counts them as added: the sender's work is done.
    return {"added": len(accepted), "errors": len(events) - len(accepted), "errors_info": errors_info}


def _not_seen(conn: Connection, task_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop events whose client id this task already has (a batch retried after a lost answer)."""
    ids = [r["client_id"] for r in rows if r["client_id"]]
    if not ids:
        return rows
    seen = {r[0] for r in conn.execute(select(s.events.c.client_id).where(
        s.events.c.task == task_id, s.events.c.client_id.in_(ids))).all()}
    unique: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        cid = row["client_id"]
        if cid is None:
            out.append(row)
        elif cid not in seen and cid not in unique:
            unique[cid] = row
            out.append(row)
    return out


def _event_out(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"task": r.task, "type": r.type, "timestamp": r.timestamp, "seq": r.seq}
    if r.type == LOG:
        out.update(level=r.level, msg=r.msg, worker=r.worker)
        return out
    out.update(iter=r.iter, metric=r.metric, variant=r.variant)
    if r.value is not None:
        out["value"] = r.value
    if r.doc:
        out.update(loads(r.doc))
    return out


def _page(call: Call, event_type: str | None, default_desc: bool) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    batch = call.int("batch_size", 500, minimum=1) or 500
    batch = min(batch, 10_000)
    order = call.str("order")
    if order not in (None, "asc", "desc"):
        raise errors.validation_error("order must be 'asc' or 'desc'")
    desc = (order == "desc") if order else call.bool("navigate_earlier", default_desc)
    scroll = call.str("scroll_id")
    e = s.events.c
    where = [e.task == task_id]
    if event_type:
        where.append(e.type == event_type)
    from_ts = call.int("from_timestamp")
    if from_ts is not None:
        where.append(e.timestamp < from_ts if desc else e.timestamp > from_ts)
    if scroll:
        try:
            cursor = int(scroll)
        except ValueError:
            raise errors.validation_error(f"Invalid scroll_id: {scroll!r}") from None
        where.append(e.seq < cursor if desc else e.seq > cursor)
    with call.store.read() as conn:
        if get_task(conn, task_id) is None:
            raise errors.invalid_task_id(task_id)
        order = e.seq.desc() if desc else e.seq.asc()
        rows = conn.execute(select(s.events).where(*where).order_by(order).limit(batch)).all()
        total_where = [e.task == task_id] + ([e.type == event_type] if event_type else [])
        total = conn.execute(select(func.count()).where(*total_where)).scalar() or 0
    events = [_event_out(r) for r in rows]
    next_scroll = str(rows[-1].seq) if rows else (scroll or "")
    return {"events": events, "returned": len(events), "total": total, "scroll_id": next_scroll}


@endpoint("events.get_task_log")
def get_task_log(call: Call) -> dict[str, Any]:
    """Newest first by default (`navigate_earlier`); `order: asc` with `scroll_id` follows a log forward."""
    return _page(call, LOG, default_desc=True)


@endpoint("events.get_task_events")
def get_task_events(call: Call) -> dict[str, Any]:
    return _page(call, call.str("event_type"), default_desc=False)


@endpoint("events.get_scalar_metrics_and_variants")
def get_scalar_metrics_and_variants(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    e = s.events.c
    with call.store.read() as conn:
        rows = conn.execute(select(e.metric, e.variant).where(e.task == task_id, e.type == SCALAR).distinct()).all()
    metrics: dict[str, dict[str, Any]] = {}
    for metric, variant in rows:
        metrics.setdefault(metric, {})[variant] = {"name": variant}
    return {"metrics": metrics}


@endpoint("events.scalar_metrics_iter_histogram")
def scalar_metrics_iter_histogram(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    e = s.events.c
    with call.store.read() as conn:
        rows = conn.execute(select(e.metric, e.variant, e.iter, e.value).where(e.task == task_id, e.type == SCALAR)
                            .order_by(e.seq)).all()
    out: dict[str, dict[str, Any]] = {}
    for metric, variant, it, value in rows:
        series = out.setdefault(metric, {}).setdefault(variant, {"name": variant, "x": [], "y": []})
        series["x"].append(it)
        series["y"].append(value)
    return out


@endpoint("events.delete_for_task")
def delete_for_task(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = get_task(conn, task_id)
        if doc is not None:
            require_task_owner(call, conn, doc, "delete its events")
        deleted = conn.execute(delete(s.events).where(s.events.c.task == task_id)).rowcount
    return {"deleted": bool(deleted)}  # a bool, as the SDK parses it
