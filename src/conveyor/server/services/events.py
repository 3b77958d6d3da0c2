"""The `events` service: logs and metrics of tasks; keeps `last_iteration` and `last_metrics` current."""

from __future__ import annotations

from typing import Any

from conveyor.protocol import errors
from conveyor.server.call import Call
from conveyor.server.model import events as events_model
from conveyor.server.ownership import require_task_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store.documents import get_task


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
            rows.append(events_model.event_row(event))
        except ValueError as exc:
            errors_info[str(index)] = str(exc)
    if not rows:
        return {"added": 0, "errors": len(errors_info), "errors_info": errors_info}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    accepted = 0
    with call.store.write() as conn:
        for task_id, task_rows in by_task.items():
            doc = get_task(conn, task_id, lock=True)
            if doc is None:
                errors_info[task_id] = f"Invalid task id: {task_id}"
                continue
            require_task_owner(call, conn, doc, "report events for it", as_runner=True)
            accepted += len(task_rows)
            events_model.add(conn, doc, task_rows)
    # A retried batch whose events were already stored counts them as added: the sender's work is done.
    return {"added": accepted, "errors": len(events) - accepted, "errors_info": errors_info}


def _page(call: Call, event_type: str | None, default_desc: bool) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    batch = call.int("batch_size", 500, minimum=1) or 500
    batch = min(batch, 10_000)
    order = call.str("order")
    if order not in (None, "asc", "desc"):
        raise errors.validation_error("order must be 'asc' or 'desc'")
    desc = (order == "desc") if order else call.bool("navigate_earlier", default_desc)
    scroll = call.str("scroll_id")
    after_seq = None
    if scroll:
        try:
            after_seq = int(scroll)
        except ValueError:
            raise errors.validation_error(f"Invalid scroll_id: {scroll!r}") from None
    with call.store.read() as conn:
        if get_task(conn, task_id) is None:
            raise errors.invalid_task_id(task_id)
        events, total, last = events_model.page(conn, task_id, event_type, desc=desc, limit=batch,
                                          from_timestamp=call.int("from_timestamp"), after_seq=after_seq)
    next_scroll = str(last) if last is not None else (scroll or "")
    return {"events": events, "returned": len(events), "total": total, "scroll_id": next_scroll}


@endpoint("events.get_task_log")
def get_task_log(call: Call) -> dict[str, Any]:
    """Newest first by default (`navigate_earlier`); `order: asc` with `scroll_id` follows a log forward."""
    return _page(call, events_model.LOG, default_desc=True)


@endpoint("events.get_task_events")
def get_task_events(call: Call) -> dict[str, Any]:
    return _page(call, call.str("event_type"), default_desc=False)


@endpoint("events.get_scalar_metrics_and_variants")
def get_scalar_metrics_and_variants(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.read() as conn:
        rows = events_model.scalar_names(conn, task_id)
    metrics: dict[str, dict[str, Any]] = {}
    for metric, variant in rows:
        metrics.setdefault(metric, {})[variant] = {"name": variant}
    return {"metrics": metrics}


@endpoint("events.scalar_metrics_iter_histogram")
def scalar_metrics_iter_histogram(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.read() as conn:
        rows = events_model.scalars(conn, task_id)
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
        deleted = events_model.delete_all(conn, task_id)
    return {"deleted": bool(deleted)}  # a bool, as the SDK parses it
