"""Tasks: the status machine and what moves a task along it (enqueue, dequeue, stop, reset, delete)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.protocol.failure import ATTEMPTS_FIELD, RETRIES_USED_FIELD
from conveyor.protocol.failure import FIELD as FAILURE_CLASS
from conveyor.protocol.ids import new_id
from conveyor.protocol.status import CHANGED_BY, FINAL_VALUES, STOPPING, TaskStatus, can_transition
from conveyor.protocol.task_types import TASK_TYPES
from conveyor.server.codec import Document, iso, now, to_epoch
from conveyor.server.model import queue_limits
from conveyor.server.store import schema as s
from conveyor.server.store.documents import add_entry, get_task, insert_task, remove_entries, save_task

S = TaskStatus
DEVELOPMENT = "development"  # system tag of a task run by hand (the SDK's Task.init), not by an agent
STOPPED_BY_USER = "stopped by user"
# What a task may be enqueued from without force: anything not queued or running.
ENQUEUABLE = frozenset({S.created.value, S.stopped.value, S.failed.value, S.completed.value, S.closed.value})
# Statuses that end a run and stamp `completed`; closing (a stopped task, normally) does not stamp it again.
ENDS_RUN = FINAL_VALUES - {S.closed.value}
HISTORY_LIMIT = 200  # status changes kept in `status_history` (the oldest go first); see docs/status-history.md


def new_task(name: str, task_type: str, *, user: str, company: str) -> Document:
    stamp = iso(now())
    doc: Document = {
        "id": new_id(),
        "name": name,
        "user": user,
        "company": company,
        "type": task_type,
        "status": S.created.value,
        "status_reason": "",
        "status_message": "",
        "comment": "",
        "created": stamp,
        "last_update": stamp,
        "last_change": stamp,
        "status_changed": stamp,
        "tags": [],
        "system_tags": [],
        "script": {},
        "execution": {"parameters": {}, "model_labels": {}, "artifacts": []},
        "hyperparams": {},
        "configuration": {},
        "models": {"input": [], "output": []},
        "container": {},
        "runtime": {},
        "output": {},
        "last_iteration": 0,
        "last_metrics": {},
    }
    _record_history(doc, None, S.created.value, user=user, reason=None, message=None)
    return doc


def check_type(value: object) -> str:
    if not isinstance(value, str) or value not in TASK_TYPES:
        raise errors.validation_error(f"Invalid task type {value!r}: use one of {', '.join(sorted(TASK_TYPES))}")
    return value


def check_project(conn: Connection, project_id: str | None) -> None:
    if project_id and not conn.execute(select(s.projects.c.id).where(s.projects.c.id == project_id)).first():
        raise errors.invalid_project_id(project_id)


def create(conn: Connection, doc: Document) -> str:
    check_project(conn, doc.get("project"))
    insert_task(conn, doc)
    return str(doc["id"])


def touch(doc: Document, user: str) -> float:
    ts = now()
    doc["last_update"] = doc["last_change"] = iso(ts)
    doc["last_changed_by"] = user
    return ts


def load(conn: Connection, task_id: str | None, *, lock: bool = False) -> Document:
    if not task_id:
        raise errors.missing_field("task")
    doc = get_task(conn, task_id, lock=lock)
    if doc is None:
        raise errors.invalid_task_id(task_id)
    return doc


def status_of(doc: Document) -> str:
    return doc.get("status") or S.created.value


def set_status(
    conn: Connection,
    doc: Document,
    new_status: str,
    *,
    force: bool,
    user: str = "",
    reason: str | None = None,
    message: str | None = None,
    forget_runner: bool = False,
) -> Document:
    """Move a task along the status machine; returns the changed fields (the `fields` of the answer).
    `forget_runner`: the task starts over (enqueue, reset, retry), so its last runner may no longer report on it.

    A task that leaves `queued` leaves its queue in the same transaction: a popped entry always names a queued task."""
    old = status_of(doc)
    fields = change_status(doc, new_status, force=force, user=user, reason=reason, message=message)
    if old == S.queued and fields["status"] != S.queued:
        remove_entries(conn, doc["id"])
    save_task(conn, doc, forget_runner=forget_runner)
    return fields


def change_status(doc: Document, new_status: str, *, force: bool, user: str = "", reason: str | None = None,
                  message: str | None = None) -> Document:
    """The document's side of `set_status`, which also writes it: returns the changed fields."""
    if isinstance(new_status, TaskStatus):  # stored and answered as its plain value
        new_status = new_status.value
    old = status_of(doc)
    if not force and not can_transition(old, new_status):
        raise errors.invalid_task_status(
            f"cannot change status from {old} to {new_status} (task {doc['id']}); use force=true to override"
        )
    ts = touch(doc, user)
    doc["status"] = new_status
    if reason is not None:
        doc["status_reason"] = reason
    if message is not None:
        doc["status_message"] = message
    if old != new_status:
        doc["status_changed"] = iso(ts)
    if new_status != S.failed:
        doc.pop(FAILURE_CLASS, None)  # it is the class of the failure the task is in; its attempts keep each one
    if new_status == S.in_progress and not doc.get("started"):
        doc["started"] = iso(ts)
    if new_status in ENDS_RUN and old != new_status:
        doc["completed"] = iso(ts)
        if doc.get("started"):
            doc["active_duration"] = int(ts - (to_epoch(doc["started"]) or ts))
    _record_history(doc, old, new_status, user=user, reason=reason, message=message)
    fields = {"status": new_status, "status_changed": doc["status_changed"], "last_update": doc["last_update"]}
    for key in ("status_reason", "status_message", "started", "completed"):
        if key in doc:
            fields[key] = doc[key]
    return fields


def _worker_named(message: str | None) -> str | None:
    """The worker an agent names in its status message: "Changed by conveyor host:0" (ours) or
    "Changed by clearml-agent host:0" (the reference agent's) → "host:0"."""
    if not message or not message.startswith(CHANGED_BY):
        return None
    parts = message[len(CHANGED_BY):].split()
    return parts[-1] if len(parts) >= 2 else None


def _record_history(doc: Document, old: str | None, new: str, *, user: str, reason: str | None,
                    message: str | None) -> None:
    """Append a status change to `status_history` (bounded). A repeated status adds nothing, but may name the
    worker its entry lacked: the daemon's first `started` does not name it, the executor's next one does."""
    history = doc.get("status_history")
    if not isinstance(history, list):
        history = []
    worker = _worker_named(message)
    if old == new:
        last = history[-1] if history else None
        if isinstance(last, dict) and last.get("status") == new and worker and not last.get("worker"):
            last["worker"] = worker
        doc["status_history"] = history
        return
    if worker is None and new in FINAL_VALUES and old == S.in_progress:
        worker = doc.get("last_worker")  # the run's worker, as it last reported
    # the reason and message given with this change: the document's own may be left from an earlier one
    history.append({"status": new, "previous": old, "time": doc["last_update"], "reason": reason or "",
                    "message": message or "", "user": user or None, "worker": worker})
    doc["status_history"] = history[-HISTORY_LIMIT:]


def worker_alive(conn: Connection, worker: str | None) -> bool:
    if not worker:
        return False
    row = conn.execute(select(s.workers.c.last_seen, s.workers.c.timeout).where(s.workers.c.id == worker)).first()
    return row is not None and row.last_seen + row.timeout > now()


def stop(conn: Connection, doc: Document, *, user: str, force: bool, reason: str | None,
         message: str | None) -> Document:
    """A task a live worker runs is asked to stop (status message `stopping`: its runner ends it); anything else is
    stopped at once. Returns the changed fields."""
    status = doc.get("status")
    development = DEVELOPMENT in (doc.get("system_tags") or [])
    if status == S.in_progress and not development and worker_alive(conn, doc.get("last_worker")):
        touch(doc, user)
        doc["status_message"] = STOPPING
        doc["status_reason"] = reason or STOPPED_BY_USER
        save_task(conn, doc)
        return {"status_message": STOPPING, "status_reason": doc["status_reason"]}
    if status not in (S.in_progress, S.queued, S.created) and not force:
        raise errors.invalid_task_status(f"task {doc['id']} is {status}; only queued or running tasks can be stopped")
    return set_status(conn, doc, S.stopped.value, force=True, user=user, reason=reason or STOPPED_BY_USER,
                      message=message or "")


def enqueue(conn: Connection, doc: Document, queue_id: str, *, user: str, force: bool, reason: str,
            message: str, queue: Document | None = None) -> Document:
    """Put a task at the back of a queue; its next pop names its next runner. Returns the changed fields.
    `queue`: the queue's document, when the caller has read it already."""
    fields = to_queued(doc, queue_id, user=user, force=force, reason=reason, message=message)
    queue_limits.require_room(conn, queue_id, queue)
    save_task(conn, doc, forget_runner=True)
    add_entry(conn, queue_id, doc["id"])
    return fields


def to_queued(doc: Document, queue_id: str, *, user: str, force: bool, reason: str, message: str) -> Document:
    """The document's side of an enqueue (the caller writes the task, forgetting its runner, and adds the entry):
    returns the changed fields, or refuses a task that is queued already or running (without `force`)."""
    old = status_of(doc)
    if old == S.queued:
        raise errors.invalid_task_status(f"task {doc['id']} is already queued; dequeue it first")
    if not force and old not in ENQUEUABLE:
        raise errors.invalid_task_status(f"task {doc['id']} is {old}; only a task that is not running can be enqueued")
    doc["system_tags"] = [t for t in doc.get("system_tags") or [] if t != DEVELOPMENT]
    doc.setdefault("execution", {})["queue"] = queue_id
    doc["enqueue_status"] = old  # where a dequeue takes it back to
    doc.pop("timeline", None)  # the previous run's; the next run sends its own
    doc.pop(RETRIES_USED_FIELD, None)  # a user's enqueue gives the task its `retries` again
    fields = change_status(doc, S.queued.value, force=True, user=user, reason=reason, message=message)
    fields["execution.queue"] = queue_id
    return fields


def back_to_before_enqueue(conn: Connection, task_id: str, user: str) -> None:
    """A task whose queue entry goes away without being pulled goes back to its status before the enqueue."""
    doc = get_task(conn, task_id, lock=True)
    if doc and doc.get("status") == S.queued:
        doc.get("execution", {}).pop("queue", None)
        set_status(conn, doc, doc.get("enqueue_status") or S.created.value, force=True, user=user, reason="dequeued")


def dequeue(conn: Connection, doc: Document, *, user: str, new_status: str | None, reason: str,
            message: str) -> tuple[int, Document | None]:
    """Take a task out of its queue: (entries removed, changed fields, or None when nothing was to be done)."""
    removed = remove_entries(conn, doc["id"])
    status = doc.get("status")
    if status not in (S.queued, S.in_progress) and not removed:
        return 0, None
    target = new_status or doc.get("enqueue_status") or S.created.value
    if status == S.in_progress and target == S.in_progress:
        return removed, {}
    if target == S.in_progress and status != S.queued:  # a stopped (or created) task is not started by a dequeue
        return removed, None
    return removed, set_status(conn, doc, target, force=True, user=user, reason=reason, message=message)


def reset(conn: Connection, doc: Document, *, user: str, force: bool, clear_all: bool,
          reason: str) -> tuple[int, Document]:
    """Back to `created` with no run behind it: (queue entries removed, changed fields)."""
    task_id = doc["id"]
    if doc.get("status") == S.published and not force:
        raise errors.invalid_task_status(f"task {task_id} is published; use force=true to reset it")
    dequeued = remove_entries(conn, task_id)
    conn.execute(delete(s.events).where(s.events.c.task == task_id))
    for key in ("started", "completed", "active_duration", "last_worker", "last_worker_report", "enqueue_status",
                "timeline", ATTEMPTS_FIELD, RETRIES_USED_FIELD):
        doc.pop(key, None)
    doc["last_iteration"] = 0
    doc["last_metrics"] = {}
    doc["output"] = {"destination": (doc.get("output") or {}).get("destination")}
    doc.setdefault("execution", {}).pop("queue", None)
    if clear_all:
        doc["execution"]["artifacts"] = []
        doc["models"] = {"input": [], "output": []}
    runtime = doc.get("runtime") or {}
    doc["runtime"] = {k: v for k, v in runtime.items() if not k.startswith("_")}
    fields = set_status(conn, doc, S.created.value, force=True, user=user, reason=reason, message="",
                        forget_runner=True)
    return dequeued, fields


def delete_task(conn: Connection, doc: Document, *, force: bool) -> None:
    """A task, its queue entries and its events; a running one only with force."""
    task_id = doc["id"]
    if doc.get("status") == S.in_progress and not force:
        raise errors.invalid_task_status(f"task {task_id} is running; stop it first or use force=true")
    remove_entries(conn, task_id)
    conn.execute(delete(s.events).where(s.events.c.task == task_id))
    conn.execute(delete(s.tasks).where(s.tasks.c.id == task_id))
