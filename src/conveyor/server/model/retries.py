"""Retries that know why: a failed run is recorded as an attempt on its task, and an infrastructure failure goes
back to the front of the queue it came from while `retries: N` allows (protocol/failure.py).

The retry is decided here, on the server, in the transaction that fails the task: it happens whether the agent
reported the failure or died with it (the reaper fails a lost worker's task through this same path)."""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Connection

from conveyor.protocol.failure import (
    ATTEMPTS_FIELD,
    ATTEMPTS_LIMIT,
    FIELD,
    QUEUE_RETRIES_KEY,
    RETRIES_NAME,
    RETRIES_SECTION,
    RETRIES_USED_FIELD,
    FailureClass,
    retries_count,
)
from conveyor.protocol.status import TaskStatus
from conveyor.server.codec import Document
from conveyor.server.model import events
from conveyor.server.model.tasks import set_status
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.documents import add_entry, get_queue, save_task

log = logging.getLogger("conveyor.server")
RETRY_MESSAGE = "retry by conveyor"  # status_message of the re-enqueue, in the task's status history


def requeued_by_retry(doc: Document) -> bool:
    """Whether the task is queued again by a retry (its last status change is the retry's re-enqueue)."""
    history = doc.get("status_history")
    last = history[-1] if isinstance(history, list) and history else None
    return (doc.get("status") == TaskStatus.queued and isinstance(last, dict)
            and last.get("status") == TaskStatus.queued and last.get("message") == RETRY_MESSAGE)


def allowed(doc: Document, queue: Document | None) -> tuple[int, str]:
    """How many retries the task may have, and where that number comes from ("" when none is set). The task's
    `properties/retries` wins over its queue's metadata `retries`. A value that is not a whole number ≥ 0 is
    refused with ValueError, its message naming where it is."""
    metadata = (queue or {}).get("metadata") or {}
    sources = ((f"the task's user property {RETRIES_SECTION}/{RETRIES_NAME}",
                ((doc.get("hyperparams") or {}).get(RETRIES_SECTION) or {}).get(RETRIES_NAME)),
               (f"the metadata key {QUEUE_RETRIES_KEY!r} of queue {(queue or {}).get('name', '')}",
                metadata.get(QUEUE_RETRIES_KEY) if isinstance(metadata, dict) else None))
    for where, raw in sources:
        try:
            count = retries_count(raw)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if count is not None:
            return count, where
    return 0, ""


def _log_line(conn: Connection, doc: Document, text: str, level: str, worker: str | None) -> None:
    """A line in the task's log, as a daemon writes its own: it marks where one attempt ends in the log."""
    row = events.event_row({"task": doc["id"], "type": "log", "msg": text + "\n", "level": level,
                            "worker": worker or "", "timestamp": int(time.time() * 1000)})
    conn.execute(s.events.insert(), [row])


def after_failure(conn: Connection, doc: Document, failure_class: FailureClass, *, reason: str, worker: str | None,
                  user: str = "") -> str | None:
    """Record the failed run of `doc` (already `failed`, locked) as an attempt and, for an infrastructure failure
    with retries left, put it back at the front of its queue. Returns that queue (to wake), or None."""
    row = sql.run(conn, "get_puller", {"id": doc["id"]}).fetchone()
    puller = row[0] if row else None  # the worker that pulled this run: where the retry goes last
    worker = worker or puller
    attempts = doc.get(ATTEMPTS_FIELD)
    attempts = attempts if isinstance(attempts, list) else []
    number = len(attempts) + 1
    doc[FIELD] = failure_class.value
    entry: Document = {"attempt": number, "worker": worker, "reason": reason, FIELD: failure_class.value,
                       "time": doc.get("last_update"), "retried": False}
    attempts.append(entry)
    doc[ATTEMPTS_FIELD] = attempts[-ATTEMPTS_LIMIT:]
    queue_id = (doc.get("execution") or {}).get("queue")
    queue = get_queue(conn, queue_id) if queue_id else None
    used = int(doc.get(RETRIES_USED_FIELD) or 0)
    where = f" on {worker}" if worker else ""
    head = f"conveyor: attempt {number} failed{where}: {reason} [{failure_class.value}]"
    if failure_class != FailureClass.infrastructure or queue is None or not queue_id:
        _log_line(conn, doc, head, "error", worker)
        save_task(conn, doc)
        return None
    try:
        limit, source = allowed(doc, queue)
    except ValueError as exc:
        _log_line(conn, doc, f"{head}; not retried: {exc}", "error", worker)
        save_task(conn, doc)
        return None
    if used >= limit:
        tail = f"; {limit} retr{'y' if limit == 1 else 'ies'} used up ({source})" if limit else ""
        _log_line(conn, doc, head + tail, "error", worker)
        save_task(conn, doc)
        return None
    entry["retried"] = True
    doc[RETRIES_USED_FIELD] = used + 1
    _log_line(conn, doc, f"{head}; retry {used + 1} of {limit} ({source}): back at the front of queue "
                         f"{queue.get('name', queue_id)}", "warning", worker)
    doc.pop("timeline", None)  # the failed run's, as an enqueue clears it: the retry sends its own
    # straight from failed to queued: the failure stays in the status history, the failure class with the attempt
    set_status(conn, doc, TaskStatus.queued.value, force=True, user=user, reason=f"retry {used + 1} of {limit} "
               f"after: {reason}", message=RETRY_MESSAGE, forget_runner=True)
    add_entry(conn, queue_id, doc["id"], front=True, avoid=puller)  # other workers first (retry_elsewhere_sec)
    log.warning("task %s: %s failure (%s): retry %d of %d", doc["id"], failure_class.value, reason, used + 1, limit)
    return str(queue_id)
