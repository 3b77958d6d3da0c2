"""Events of a task: its log lines and metrics. Storing a batch keeps the task's `last_iteration` and
`last_metrics` current, and drops events a retried batch already stored (by their client id)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlalchemy import Row, delete, func, or_, select, true
from sqlalchemy.engine import Connection

from conveyor.server.codec import INT64_MAX, Document, dumps, iso, loads
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.documents import save_task

LOG = "log"
SCALAR = "training_stats_scalar"
MetricFilter = list[tuple[str, list[str]]]  # (metric, its variants; none = all)
LEVELS = {"notset", "debug", "verbose", "info", "warn", "warning", "error", "fatal", "critical"}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - ClearML keys last_metrics by md5 of the names


def storable(text: str) -> str:
    """Text as both databases keep it: PostgreSQL's text cannot hold NUL, so a process that prints one gets the
    visible escape `\\x00` on either database, never a refused batch (and a lost log)."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def event_row(event: object) -> dict[str, Any]:
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
                                                             "worker", "method", "conveyor_id", "model_event",
                                                             "allow_locked")}
        row["doc"] = dumps(rest)
    return row


def update_task(doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """What a task's new events change in it: its last iteration, last metrics and `last_update`."""
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


def add(conn: Connection, doc: Document, rows: list[dict[str, Any]]) -> None:
    """Store a task's validated events (`event_row`) but those already stored, and bring the task up to date.
    Only metrics change the task beyond its `last_update`, so only they are looked up first: a log batch is stored
    with no read (the insert itself skips what is already there)."""
    update_task(doc, _not_seen(conn, doc["id"], [r for r in rows if r["type"] != LOG]))
    save_task(conn, doc)
    sql.insert_events(conn, rows)


def add_for_model(conn: Connection, model_id: str, rows: list[dict[str, Any]]) -> None:
    """Store a model's events (metrics reported on an OutputModel) but those already stored."""
    sql.insert_events(conn, rows)


def event_out(r: Row[Any]) -> dict[str, Any]:
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


def page(conn: Connection, task_id: str, event_type: str | None, *, desc: bool, limit: int,
         from_timestamp: int | None, after_seq: int | None,
         metrics: MetricFilter | None = None) -> tuple[list[Document], int, int | None]:
    """A page of a task's events (of one type, if given; of some metrics, if given) in order of arrival, newest
    first with `desc`, starting past `from_timestamp` (epoch ms) and past the event `after_seq`. Returns it with the
    count of all the task's events of that kind and the `seq` of the page's last event (where the next page starts)."""
    e = s.events.c
    same_kind = _where([task_id], event_type, metrics or [])
    where = list(same_kind)
    if from_timestamp is not None:
        where.append(e.timestamp < from_timestamp if desc else e.timestamp > from_timestamp)
    if after_seq is not None:
        where.append(e.seq < after_seq if desc else e.seq > after_seq)
    order = e.seq.desc() if desc else e.seq.asc()
    rows = conn.execute(select(s.events).where(*where).order_by(order).limit(limit)).all()
    total = conn.execute(select(func.count()).where(*same_kind)).scalar() or 0
    return [event_out(r) for r in rows], int(total), rows[-1].seq if rows else None


def scalar_names(conn: Connection, task_id: str) -> list[tuple[str, str]]:
    e = s.events.c
    query = select(e.metric, e.variant).where(e.task == task_id, e.type == SCALAR).distinct()
    return [(r.metric, r.variant) for r in conn.execute(query)]


def scalars(conn: Connection, task_id: str) -> list[tuple[str, str, int | None, float]]:
    """(metric, variant, iteration, value) of a task's scalars, in order of arrival."""
    e = s.events.c
    query = select(e.metric, e.variant, e.iter, e.value).where(e.task == task_id, e.type == SCALAR).order_by(e.seq)
    return [(r.metric, r.variant, r.iter, r.value) for r in conn.execute(query)]


def delete_all(conn: Connection, task_id: str) -> int:
    return int(conn.execute(delete(s.events).where(s.events.c.task == task_id)).rowcount or 0)


# --- reading metrics back: what the SDK's get_reported_* and the web app's task pages ask ---------------------------
PLOT = "plot"
IMAGE = "training_debug_image"
SINGLE_VALUE_ITER = -(2**31)  # the iteration of `Logger.report_single_value`: a value that is no series


def metric_filter(raw: object) -> MetricFilter:
    """The `metrics` of a request ([{metric, variants}]); raises ValueError with what is wrong."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("'metrics' must be a list of {metric, variants}")
    out: MetricFilter = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("metric", ""), str):
            raise ValueError("each of 'metrics' must be an object with a string 'metric' and a list 'variants'")
        variants = item.get("variants") or []
        if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
            raise ValueError("'variants' must be a list of strings")
        if item.get("metric"):
            out.append((item["metric"], variants))
    return out


def _where(task_ids: list[str], etype: str | None, metrics: MetricFilter) -> list[Any]:
    e = s.events.c
    where: list[Any] = [e.task.in_(task_ids) if len(task_ids) != 1 else e.task == task_ids[0]]
    if etype:
        where.append(e.type == etype)
    if metrics:
        where.append(or_(*[(e.metric == m) & (e.variant.in_(vs) if vs else true()) for m, vs in metrics]))
    return where


def scalar_points(conn: Connection, task_ids: list[str], metrics: MetricFilter) -> list[Any]:
    """(task, metric, variant, iter, timestamp, value) of the tasks' scalar series (not single values), in order."""
    e = s.events.c
    query = select(e.task, e.metric, e.variant, e.iter, e.timestamp, e.value).where(
        *_where(task_ids, SCALAR, metrics), or_(e.iter.is_(None), e.iter != SINGLE_VALUE_ITER))
    return list(conn.execute(query.order_by(e.seq)).all())


def single_values(conn: Connection, task_ids: list[str], metrics: MetricFilter) -> dict[str, list[Document]]:
    """Each task's single values (the last reported of each name), by task."""
    e = s.events.c
    rows = conn.execute(select(e.task, e.metric, e.variant, e.value, e.timestamp).where(
        *_where(task_ids, SCALAR, metrics), e.iter == SINGLE_VALUE_ITER).order_by(e.seq)).all()
    latest: dict[str, dict[tuple[str, str], Document]] = {}
    for r in rows:
        latest.setdefault(r.task, {})[(r.metric, r.variant)] = {
            "metric": r.metric, "variant": r.variant, "value": r.value, "timestamp": r.timestamp}
    return {task: list(values.values()) for task, values in latest.items()}


def metric_names(conn: Connection, task_ids: list[str], etype: str | None) -> dict[str, list[str]]:
    """The metrics each task reported (of one event type, if given; never its log), by task."""
    e = s.events.c
    query = select(e.task, e.metric).where(*_where(task_ids, etype, []), e.type != LOG).distinct()
    names: dict[str, set[str]] = {}
    for r in conn.execute(query):
        names.setdefault(r.task, set()).add(r.metric)
    return {task: sorted(found) for task, found in names.items()}


def metric_variants(conn: Connection, task_ids: list[str], etype: str | None) -> list[tuple[str, str]]:
    """(metric, variant) pairs the tasks reported, sorted."""
    e = s.events.c
    query = select(e.metric, e.variant).where(*_where(task_ids, etype, []), e.type != LOG).distinct()
    return sorted((r.metric, r.variant) for r in conn.execute(query))


def by_iterations(conn: Connection, task_ids: list[str], etype: str, metrics: MetricFilter, iters: int | None,
                  *, earlier: bool = True, past: dict[str, int] | None = None,
                  per_metric: bool = False) -> list[Document]:
    """The events of a type in `iters` iterations of each task (all, without `iters`): the latest ones going
    `earlier`, else the first ones; `past` (by task) starts beyond an iteration (where a previous page ended). With
    `per_metric`, `iters` iterations of each metric of a task rather than of the task as a whole.

    The iterations are chosen first from the (small) index columns, then only their events are read: a run that
    reports a figure every epoch holds thousands of big events, and the UI asks for the latest few often."""
    e = s.events.c
    it_col = func.coalesce(e.iter, 0)
    where = _where(task_ids, etype, metrics)

    limits = past or {}

    def beyond(task: str, it: int) -> bool:
        return task in limits and (it >= limits[task] if earlier else it <= limits[task])

    kept: dict[tuple[str, str], set[int]] | None = None
    if iters:
        groups = [e.task, e.metric] if per_metric else [e.task]
        found: dict[tuple[str, str], list[int]] = {}
        for r in conn.execute(select(*groups, it_col.label("it")).where(*where).distinct()).all():
            it = int(r.it)
            if not beyond(r.task, it):
                found.setdefault((r.task, r.metric if per_metric else ""), []).append(it)
        kept = {group: set(sorted(its, reverse=earlier)[:iters]) for group, its in found.items()}
        wanted = set().union(*kept.values())
        if not wanted:
            return []
        where = [*where, it_col.in_(sorted(wanted))]
    order = it_col.desc() if earlier else it_col.asc()
    out: list[Document] = []
    rows: list[Any] = list(conn.execute(select(s.events).where(*where).order_by(order, e.seq)).all())
    for r in rows:
        it = r.iter if r.iter is not None else 0
        if kept is None:
            if not beyond(r.task, it):
                out.append(event_out(r))
        elif it in kept.get((r.task, r.metric if per_metric else ""), ()):
            out.append(event_out(r))
    return out


def count(conn: Connection, task_id: str, etype: str) -> int:
    e = s.events.c
    return int(conn.execute(select(func.count()).where(e.task == task_id, e.type == etype)).scalar() or 0)


def scalar_page(conn: Connection, task_id: str, metrics: MetricFilter, *, after_seq: int, limit: int) -> list[Any]:
    """A page of a task's scalar points (not single values) in order of arrival, past the event `after_seq`."""
    e = s.events.c
    query = select(e.seq, e.variant, e.iter, e.timestamp, e.value).where(
        *_where([task_id], SCALAR, metrics), or_(e.iter.is_(None), e.iter != SINGLE_VALUE_ITER), e.seq > after_seq)
    return list(conn.execute(query.order_by(e.seq).limit(limit)).all())


def scalar_count(conn: Connection, task_id: str, metrics: MetricFilter) -> int:
    e = s.events.c
    query = select(func.count()).where(*_where([task_id], SCALAR, metrics),
                                       or_(e.iter.is_(None), e.iter != SINGLE_VALUE_ITER))
    return int(conn.execute(query).scalar() or 0)
