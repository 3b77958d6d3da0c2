"""The `events` service: logs and metrics of tasks; keeps `last_iteration` and `last_metrics` current."""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.server.call import Call
from conveyor.server.codec import INT64_MAX, loads
from conveyor.server.model import events as events_model
from conveyor.server.ownership import owns, require_task_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store import known_docs, sql
from conveyor.server.store import schema as s
from conveyor.server.store.documents import get_task, task_columns
from conveyor.server.threads import in_thread

if TYPE_CHECKING:
    from conveyor.server.store.async_pg import AsyncPg


def _store(call: Call, events: list[Any]) -> tuple[int, dict[str, str]]:
    """Validate and store events; returns how many were accepted and what was wrong with the others. Events with
    `model_event` belong to a model (its id in `task`): they are kept by that id and change no task."""
    errors_info: dict[str, str] = {}
    by_task: dict[str, list[dict[str, Any]]] = {}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for index, event in enumerate(events):
        try:
            row = events_model.event_row(event)
        except ValueError as exc:
            errors_info[str(index)] = str(exc)
            continue
        (by_model if event.get("model_event") else by_task).setdefault(row["task"], []).append(row)
    accepted = 0
    if not by_task and not by_model:
        return accepted, errors_info
    with call.store.write() as conn:
        for task_id, task_rows in by_task.items():
            doc = get_task(conn, task_id, lock=True)
            if doc is None:
                errors_info[task_id] = f"Invalid task id: {task_id}"
                continue
            require_task_owner(call, conn, doc, "report events for it", as_runner=True)
            accepted += len(task_rows)
            events_model.add(conn, doc, task_rows)
        for model_id, model_rows in by_model.items():
            if get_task(conn, model_id) is not None:  # a task's events go through its owner's checks
                errors_info[model_id] = f"{model_id} is a task, not a model: send its events without model_event"
                continue
            accepted += len(model_rows)
            events_model.add_for_model(conn, model_id, model_rows)
    return accepted, errors_info


@endpoint("events.add_batch")
async def add_batch(call: Call) -> dict[str, Any]:
    events = call.body.get("requests")
    if events is None:
        events = call.body.get("events")
    if not isinstance(events, list):
        raise errors.validation_error("events.add_batch needs a list of events (JSON lines or a JSON list)")
    pg = call.store.on_loop
    on_loop = await _store_log_on_loop(call, pg, events) if pg is not None else None
    errors_info: dict[str, str] = {}
    if on_loop is not None:
        accepted = on_loop
    elif call.store.inline:
        accepted, errors_info = _store(call, events)
    else:
        accepted, errors_info = await in_thread(_store, call, events)
    # A retried batch whose events were already stored counts them as added: the sender's work is done.
    return {"added": accepted, "errors": len(events) - accepted, "errors_info": errors_info}


TASK_READS = 3  # reads of a task that changes under a log batch each time, before the thread's transaction takes it
LOOP_BATCH_CHARS = 256 << 10  # log batches with more text are stored from a thread


async def _store_log_on_loop(call: Call, pg: AsyncPg, events: list[Any]) -> int | None:
    """A batch of one task's log lines on PostgreSQL's event-loop connections: one statement that saves the task's
    `last_update` if its document is still as this process knew it (known_docs.py) and stores the lines; else a
    read and that statement again. Log batches stream from every running task, and served from threads each paid
    its transaction's round trips in interpreter-lock handovers. None leaves the batch to `_store` (in a thread):
    metrics, model events, several tasks, bad events, a missing task or one not the caller's (the errors say why),
    more lines than one statement takes, or a task that changed under each read."""
    if not events or len(events) > sql.EVENTS_PER_INSERT:
        return None
    if sum(len(e["msg"]) for e in events if isinstance(e, dict) and isinstance(e.get("msg"), str)) > LOOP_BATCH_CHARS:
        return None  # its rows are made in a thread, off the loop every call shares
    rows: list[dict[str, Any]] = []
    for event in events:
        try:
            row = events_model.event_row(event)
        except ValueError:
            return None
        if row["type"] != events_model.LOG or event.get("model_event") or (rows and row["task"] != rows[0]["task"]):
            return None
        rows.append(row)
    task_id = rows[0]["task"]
    key = call.identity.access_key if call.identity is not None else None
    stored = known_docs.TASKS.get(task_id)
    guessed = stored is not None  # only what was read decides a refusal
    for _ in range(TASK_READS + guessed):
        if stored is None:
            found = await pg.fetch("task_for_events", {"id": task_id, "most": known_docs.MAX_DOC_BYTES})
            if not found or found[0][0] is None:
                return None  # missing (the thread says so) or too large to handle on the loop
            stored, runner = found[0]
            guessed = False
        doc = loads(stored)
        owner = owns(call, doc)
        if not guessed and not owner and not (key and runner == key):
            return None  # the thread's transaction answers the 403, with the owner's name
        events_model.update_task(doc, rows)
        columns = task_columns(doc)
        ((saved, _, held),) = await pg.fetch("log_batch_write", {
            "id": task_id, "old": stored, "owner": owner, "key": key, **columns, "rows": sql.events_json(rows)})
        if saved:
            known_docs.TASKS.remember(task_id, columns["doc"])
            return len(rows)
        if not held:
            return None  # missing, or locked by a transaction in progress: the thread's transaction waits for it
        stored = None  # changed since, or not the caller's: read it
    return None


@endpoint("events.add")
def add(call: Call) -> dict[str, Any]:
    """One event, the body itself; a bad one is a 400 that says what is wrong."""
    accepted, errors_info = _store(call, [call.body])
    if not accepted:
        problem = next(iter(errors_info.values()), "the event was not stored")
        if problem.startswith("Invalid task id"):
            raise errors.invalid_task_id(call.body.get("task"))
        raise errors.validation_error(f"Validation error: {problem}")
    return {}


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
        if not call.bool("model_events") and get_task(conn, task_id) is None:
            raise errors.invalid_task_id(task_id)
        events, total, last = events_model.page(conn, task_id, event_type, desc=desc, limit=batch,
                                          from_timestamp=call.int("from_timestamp"), after_seq=after_seq,
                                          metrics=_metrics(call))
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


# --- metrics read back ----------------------------------------------------------------------------------------------
DEFAULT_SAMPLES = 6000  # points of a scalar series the histogram answers when the call names none, as the reference
MAX_RAW_BATCH = 200_000
X_KEYS = ("iter", "timestamp", "iso_time")


def _metrics(call: Call) -> events_model.MetricFilter:
    try:
        return events_model.metric_filter(call.body.get("metrics"))
    except ValueError as exc:
        raise errors.validation_error(f"Validation error: {exc}") from None


def _existing(call: Call, conn: Connection, task_ids: list[str]) -> dict[str, str]:
    """The tasks' names by id; an unknown id is a 400 (model ids, with `model_events`, are taken as they are)."""
    if call.bool("model_events"):
        return {tid: "" for tid in task_ids}
    names = dict(conn.execute(select(s.tasks.c.id, s.tasks.c.name).where(s.tasks.c.id.in_(task_ids))).all())
    for tid in task_ids:
        if tid not in names:
            raise errors.invalid_task_id(tid)
    return names


def _tasks(call: Call) -> list[str]:
    task_ids = call.str_list("tasks")
    if not task_ids:
        raise errors.missing_field("tasks")
    return task_ids


def _x(key: str, it: int | None, timestamp: int) -> Any:
    if key == "iter":
        return it
    if key == "timestamp":
        return timestamp
    return datetime.fromtimestamp(timestamp / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _key(call: Call) -> str:
    key = call.str("key") or "iter"
    if key not in X_KEYS:
        raise errors.validation_error(f"Validation error: 'key' must be one of {', '.join(X_KEYS)}, got {key!r}")
    return key


def _downsample(xs: list[Any], ys: list[float], samples: int) -> tuple[list[Any], list[float]]:
    """At most `samples` points: consecutive windows averaged, each at its first x."""
    if not samples or len(xs) <= samples:
        return xs, ys
    width = -(-len(xs) // samples)
    return ([xs[i] for i in range(0, len(xs), width)],
            [sum(ys[i:i + width]) / len(ys[i:i + width]) for i in range(0, len(ys), width)])


@endpoint("events.scalar_metrics_iter_histogram", offload=True)
def scalar_metrics_iter_histogram(call: Call) -> dict[str, Any]:
    """{metric: {variant: {name, x, y}}} of a task's scalar series (single values are no series), at most `samples`
    points each; x is the iteration, the timestamp (ms) or the ISO time (`key`)."""
    task_id = call.str("task", required=True)
    key = _key(call)
    samples = call.int("samples", DEFAULT_SAMPLES, minimum=0) or 0
    metrics = _metrics(call)
    with call.store.read() as conn:
        _existing(call, conn, [task_id])
        rows = events_model.scalar_points(conn, [task_id], metrics)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        series = out.setdefault(r.metric, {}).setdefault(r.variant, {"name": r.variant, "x": [], "y": []})
        series["x"].append(_x(key, r.iter, r.timestamp))
        series["y"].append(r.value)
    for variants in out.values():
        for series in variants.values():
            series["x"], series["y"] = _downsample(series["x"], series["y"], samples)
    return out


@endpoint("events.scalar_metrics_iter_raw", offload=True)
def scalar_metrics_iter_raw(call: Call) -> dict[str, Any]:
    """Every point of one metric's variants, a batch at a time: {variants: {variant: {y, <key>}}}; the next call
    with `scroll_id` goes on where this one ended, and an answer with none returned is the end."""
    task_id = call.str("task", required=True)
    metric = call.dict("metric")
    if not metric or not isinstance(metric.get("metric"), str):
        raise errors.validation_error("Validation error: 'metric' must be {\"metric\": NAME, \"variants\": [...]}")
    try:
        metrics = events_model.metric_filter([metric]) if metric.get("metric") else []
    except ValueError as exc:
        raise errors.validation_error(f"Validation error: {exc}") from None
    key = _key(call)
    batch = min(call.int("batch_size", 10_000, minimum=1) or 10_000, MAX_RAW_BATCH)
    after = _scroll_in(call.str("scroll_id")).get("seq", 0)
    if isinstance(after, bool) or not isinstance(after, int) or _position(after) is None:
        raise errors.validation_error("Invalid scroll_id: pass the one the previous call answered")
    with call.store.read() as conn:
        _existing(call, conn, [task_id])
        rows = events_model.scalar_page(conn, task_id, metrics, after_seq=int(after), limit=batch)
        total = events_model.scalar_count(conn, task_id, metrics) if call.bool("count_total") else None
    variants: dict[str, dict[str, list[Any]]] = {}
    for r in rows:
        series = variants.setdefault(r.variant, {"y": [], key: []})
        series["y"].append(r.value)
        series[key].append(_x(key, r.iter, r.timestamp))
    last = rows[-1].seq if rows else after
    return {"variants": variants, "total": total, "returned": len(rows), "scroll_id": _scroll_out({"seq": last})}


@endpoint("events.get_task_metrics")
def get_task_metrics(call: Call) -> dict[str, Any]:
    """The metric names each task reported events of a type for (e.g. plot, training_debug_image)."""
    task_ids = _tasks(call)
    with call.store.read() as conn:
        _existing(call, conn, task_ids)
        names = events_model.metric_names(conn, task_ids, call.str("event_type"))
    return {"metrics": [{"task": tid, "metrics": names.get(tid, [])} for tid in task_ids]}


@endpoint("events.get_multi_task_metrics")
def get_multi_task_metrics(call: Call) -> dict[str, Any]:
    task_ids = _tasks(call)
    with call.store.read() as conn:
        _existing(call, conn, task_ids)
        pairs = events_model.metric_variants(conn, task_ids, call.str("event_type"))
    grouped: dict[str, list[str]] = {}
    for metric, variant in pairs:
        grouped.setdefault(metric, []).append(variant)
    return {"metrics": [{"metric": m, "variants": vs} for m, vs in grouped.items()]}


@endpoint("events.get_task_single_value_metrics")
def get_task_single_value_metrics(call: Call) -> dict[str, Any]:
    task_ids = _tasks(call)
    with call.store.read() as conn:
        names = _existing(call, conn, task_ids)
        values = events_model.single_values(conn, task_ids, _metrics(call))
    return {"tasks": [{"task": tid, "task_name": names.get(tid, ""), "values": values.get(tid, [])}
                      for tid in task_ids if tid in values]}


def _scroll_out(state: dict[str, Any]) -> str:
    """A scroll id that carries where the next page starts: any server process can go on from it."""
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no position")


def _position(value: Any) -> int | None:
    """A position a scroll id carries (an event's seq, an iteration): an integer a query can take, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if -INT64_MAX <= value <= INT64_MAX else None


def _scroll_in(scroll: str | None) -> dict[str, Any]:
    if not scroll:
        return {}
    try:
        state = json.loads(base64.urlsafe_b64decode(scroll.encode()), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        state = None
    if not isinstance(state, dict):
        raise errors.validation_error(f"Invalid scroll_id: {scroll!r}: pass the one the previous call answered")
    return state


def _iterations(call: Call, etype: str, task_ids: list[str], metrics: events_model.MetricFilter,
                iters: int | None, *, per_metric: bool = False) -> tuple[list[dict[str, Any]], str]:
    """The events of `iters` iterations per task past the scroll, and the scroll that goes on after them."""
    earlier = call.bool("navigate_earlier", True)
    state = {} if call.bool("refresh") else _scroll_in(call.str("scroll_id"))
    given = state.get("past") or {}
    if not isinstance(given, dict):
        raise errors.validation_error("Invalid scroll_id: pass the one the previous call answered")
    past = {t: at for t, at in ((t, _position(i)) for t, i in given.items()) if at is not None}
    with call.store.read() as conn:
        found = events_model.by_iterations(conn, task_ids, etype, metrics, iters, earlier=earlier, past=past,
                                           per_metric=per_metric)
    for event in found:
        it = event.get("iter") or 0
        past[event["task"]] = min(past.get(event["task"], it), it) if earlier else max(past.get(event["task"], it), it)
    return found, _scroll_out({"past": past})


def _grouped(task_ids: list[str], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{task, iterations: [{iter, events}]}], as the reference groups debug images and plots."""
    out = []
    for tid in task_ids:
        iterations: dict[int, list[dict[str, Any]]] = {}
        for event in found:
            if event["task"] == tid:
                iterations.setdefault(event.get("iter") or 0, []).append(event)
        out.append({"task": tid, "iterations": [{"iter": it, "events": evs} for it, evs in iterations.items()]})
    return out


@endpoint("events.debug_images", offload=True)
def debug_images(call: Call) -> dict[str, Any]:
    """Debug image events (with their `url`) of the latest `iters` iterations per task and metric. The 2.7+ form
    names `metrics` [{task, metric, variants}]; the 2.1 form one `task`."""
    iters = call.int("iters", minimum=1)
    if call.body.get("metrics") is None:  # the 2.1 form
        task_id = call.str("task", required=True)
        with call.store.read() as conn:
            _existing(call, conn, [task_id])
        found, scroll = _iterations(call, events_model.IMAGE, [task_id], [], iters)
        return {"task": task_id, "images": found, "returned": len(found), "total": len(found), "scroll_id": scroll}
    requested = call.list("metrics") or []
    if not all(isinstance(m, dict) and isinstance(m.get("task"), str) for m in requested):
        raise errors.validation_error("Validation error: each of 'metrics' must name its 'task'")
    task_ids = list(dict.fromkeys(m["task"] for m in requested))
    metrics = _metrics(call)
    with call.store.read() as conn:
        _existing(call, conn, task_ids)
    found, scroll = _iterations(call, events_model.IMAGE, task_ids, metrics, iters)
    return {"metrics": _grouped(task_ids, found), "scroll_id": scroll}


@endpoint("events.plots", offload=True)
def plots(call: Call) -> dict[str, Any]:
    requested = call.list("metrics") or []
    if not requested or not all(isinstance(m, dict) and isinstance(m.get("task"), str) for m in requested):
        raise errors.validation_error("Validation error: 'metrics' must list {task, metric, variants}")
    task_ids = list(dict.fromkeys(m["task"] for m in requested))
    with call.store.read() as conn:
        _existing(call, conn, task_ids)
    found, scroll = _iterations(call, events_model.PLOT, task_ids, _metrics(call), call.int("iters", minimum=1))
    return {"metrics": _grouped(task_ids, found), "scroll_id": scroll}


@endpoint("events.get_task_plots", offload=True)
def get_task_plots(call: Call) -> dict[str, Any]:
    """A task's plot events (plotly JSON in `plot_str`, as the SDK sent it) of its latest `iters` iterations."""
    task_id = call.str("task", required=True)
    with call.store.read() as conn:
        _existing(call, conn, [task_id])
        total = events_model.count(conn, task_id, events_model.PLOT)
    found, scroll = _iterations(call, events_model.PLOT, [task_id], _metrics(call), call.int("iters", minimum=1))
    return {"plots": found, "returned": len(found), "total": total,
            "scroll_id": "" if call.bool("no_scroll") else scroll}


@endpoint("events.get_multi_task_plots", offload=True)
def get_multi_task_plots(call: Call) -> dict[str, Any]:
    """Plots of several tasks, to compare: {metric: {variant: {task: {iter: {name, plots}}}}}, of each task's
    latest `iters` iterations (of each metric, with `last_iters_per_task_metric`, the default)."""
    task_ids = _tasks(call)
    with call.store.read() as conn:
        names = _existing(call, conn, task_ids)
    found, scroll = _iterations(call, events_model.PLOT, task_ids, _metrics(call), call.int("iters", 1, minimum=1),
                                per_metric=call.bool("last_iters_per_task_metric", True))
    out: dict[str, Any] = {}
    for event in found:
        at = (out.setdefault(event["metric"], {}).setdefault(event["variant"], {}).setdefault(event["task"], {})
              .setdefault(str(event.get("iter") or 0), {"name": names.get(event["task"], ""), "plots": []}))
        at["plots"].append(event)
    return {"plots": out, "returned": len(found), "total": len(found),
            "scroll_id": "" if call.bool("no_scroll") else scroll}


def _sample_answer(images: list[dict[str, Any]], index: int, state: dict[str, Any]) -> dict[str, Any]:
    event = images[index]
    same = [e.get("iter") or 0 for e in images if e["metric"] == event["metric"] and e["variant"] == event["variant"]]
    state = {**state, "metric": event["metric"], "variant": event["variant"], "iter": event.get("iter") or 0}
    return {"scroll_id": _scroll_out(state), "event": event, "min_iteration": min(same), "max_iteration": max(same)}


def _images(call: Call, task_id: str, metric: str | None) -> list[dict[str, Any]]:
    """The task's debug images (the latest of each metric, variant and iteration) by iteration, metric, variant."""
    with call.store.read() as conn:
        _existing(call, conn, [task_id])
        found = events_model.by_iterations(conn, [task_id], events_model.IMAGE, [(metric, [])] if metric else [],
                                           None, earlier=False)
    latest = {(e.get("iter") or 0, e["metric"], e["variant"]): e for e in found}
    return [latest[k] for k in sorted(latest)]


@endpoint("events.get_debug_image_sample")
def get_debug_image_sample(call: Call) -> dict[str, Any]:
    """The debug image of a metric and variant at an iteration (the latest without one), with the scroll that
    next_debug_image_sample moves from."""
    task_id = call.str("task", required=True)
    metric = call.str("metric", required=True)
    variant = call.str("variant", required=True)
    iteration = call.int("iteration")
    images = _images(call, task_id, metric)
    matching = [i for i, e in enumerate(images) if e["metric"] == metric and e["variant"] == variant
                and (iteration is None or (e.get("iter") or 0) == iteration)]
    if not matching:
        raise errors.bad_request(f"No debug image of {metric}/{variant}" +
                                 (f" at iteration {iteration}" if iteration is not None else "") +
                                 f" in task {task_id}")
    return _sample_answer(images, matching[-1], {"current_metric": call.bool("navigate_current_metric", True)})


@endpoint("events.next_debug_image_sample")
def next_debug_image_sample(call: Call) -> dict[str, Any]:
    """The next (or, `navigate_earlier`, the previous) variant's image at the same iteration, then the next
    iteration's; with `next_iteration`, the same variant's image at the next (previous) iteration."""
    task_id = call.str("task", required=True)
    state = _scroll_in(call.str("scroll_id", required=True))
    if not ({"metric", "variant", "iter"} <= state.keys() and isinstance(state["metric"], str)
            and isinstance(state["variant"], str)):
        raise errors.validation_error("Invalid scroll_id: pass the one get_debug_image_sample answered")
    images = _images(call, task_id, state["metric"] if state.get("current_metric", True) else None)
    here = next((i for i, e in enumerate(images) if (e.get("iter") or 0, e["metric"], e["variant"]) ==
                 (state["iter"], state["metric"], state["variant"])), None)
    if here is None:
        raise errors.bad_request(f"The debug image {state['metric']}/{state['variant']} at iteration "
                                 f"{state['iter']} is gone: call get_debug_image_sample again")
    step = -1 if call.bool("navigate_earlier") else 1
    candidates = list(range(here + step, len(images) if step > 0 else -1, step))
    if call.bool("next_iteration"):
        candidates = [i for i in candidates if images[i]["metric"] == state["metric"]
                      and images[i]["variant"] == state["variant"]]
    target = next(iter(candidates), here)  # at either end the current image stays
    return _sample_answer(images, target, state)


@endpoint("events.multi_task_scalar_metrics_iter_histogram", offload=True)
def multi_task_scalar_metrics_iter_histogram(call: Call) -> dict[str, Any]:
    """Scalar series of several tasks, to compare: {metric: {variant: {task: {name, x, y}}}}."""
    task_ids = _tasks(call)
    key = _key(call)
    samples = call.int("samples", DEFAULT_SAMPLES, minimum=0) or 0
    with call.store.read() as conn:
        names = _existing(call, conn, task_ids)
        rows = events_model.scalar_points(conn, task_ids, _metrics(call))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        series = out.setdefault(r.metric, {}).setdefault(r.variant, {}).setdefault(
            r.task, {"name": names.get(r.task, ""), "x": [], "y": []})
        series["x"].append(_x(key, r.iter, r.timestamp))
        series["y"].append(r.value)
    for variants in out.values():
        for by_task in variants.values():
            for series in by_task.values():
                series["x"], series["y"] = _downsample(series["x"], series["y"], samples)
    return out


@endpoint("events.get_task_latest_scalar_values")
def get_task_latest_scalar_values(call: Call) -> dict[str, Any]:
    """Each scalar series' last value and the mean of its last 100."""
    task_id = call.str("task", required=True)
    with call.store.read() as conn:
        _existing(call, conn, [task_id])
        rows = events_model.scalar_points(conn, [task_id], [])
    series: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        series.setdefault(r.metric, {}).setdefault(r.variant, []).append(r.value)
    return {"metrics": [{"name": metric, "variants": [
        {"name": variant, "last_value": values[-1], "last_100_value": sum(values[-100:]) / len(values[-100:])}
        for variant, values in variants.items()]} for metric, variants in series.items()]}


@endpoint("events.clear_scroll")
def clear_scroll(call: Call) -> dict[str, Any]:
    """Scroll ids carry their own position: there is nothing to clear."""
    call.str("scroll_id", required=True)
    return {}


@endpoint("events.delete_for_task")
def delete_for_task(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = get_task(conn, task_id)
        if doc is not None:
            require_task_owner(call, conn, doc, "delete its events")
        deleted = events_model.delete_all(conn, task_id)
    return {"deleted": bool(deleted)}  # a bool, as the SDK parses it
