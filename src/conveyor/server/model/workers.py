"""Workers: registration with a timeout, liveness, and forgetting those that stopped reporting."""

from __future__ import annotations

from sqlalchemy import Insert, Row, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from conveyor.protocol.failure import FailureClass
from conveyor.protocol.status import TaskStatus
from conveyor.protocol.worker_state import STATE_FIELD, STATE_REASON_FIELD
from conveyor.server.codec import Document, dumps, iso, loads, now
from conveyor.server.model import retries
from conveyor.server.model.tasks import set_status
from conveyor.server.store import schema as s
from conveyor.server.store.documents import get_task, save_task

WORKER_LOST = "worker lost"  # the status reason of a task whose worker stopped reporting
STATS_KEYS = ("cpu_usage", "cpu_temperature", "memory_used", "memory_free", "disk_free_home", "disk_read", "disk_write",
              "network_rx", "network_tx", "gpu_usage", "gpu_memory_used", "gpu_memory_free", "gpu_temperature",
              "gpu_fraction")


def upsert_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT with ON CONFLICT support (SQLite and PostgreSQL spell it alike)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def touch(conn: Connection, worker: str, *, user: str, ip: str, timeout: int | None, default_timeout: int,
          register: bool) -> Document:
    """Mark a worker as heard from now (creating it on its first call); returns its document, to be `save`d."""
    ts = now()
    row = conn.execute(select(s.workers.c.doc, s.workers.c.timeout).where(s.workers.c.id == worker)).first()
    timeout = timeout or (row.timeout if row else default_timeout)
    if row:
        doc: Document = loads(row.doc)
        if register:
            doc["register_time"] = iso(ts)
        doc["last_activity_time"] = iso(ts)
        conn.execute(update(s.workers).where(s.workers.c.id == worker).values(last_seen=ts, timeout=timeout))
        return doc
    doc = {"id": worker, "register_time": iso(ts), "last_activity_time": iso(ts), "queues": [], "tags": [],
           "system_tags": []}
    insert: Insert = upsert_insert(conn, s.workers).values(
        id=worker, user_id=user, ip=ip, register_time=ts, last_seen=ts, timeout=timeout, doc=dumps(doc),
    ).on_conflict_do_nothing()
    if not conn.execute(insert).rowcount:  # a concurrent first report of this worker inserted it: update that row
        return touch(conn, worker, user=user, ip=ip, timeout=timeout, default_timeout=default_timeout,
                     register=register)
    return doc


def save(conn: Connection, worker: str, doc: Document, *, task: str | None = None, queue: str | None = None,
         current: bool = False) -> None:
    """Write a worker's document; with `current`, also what it runs now (`task`, `queue`)."""
    values: dict[str, object] = {"doc": dumps(doc)}
    if current:
        values.update(task=task, queue=queue)
    conn.execute(update(s.workers).where(s.workers.c.id == worker).values(**values))


def report(conn: Connection, worker: str, doc: Document, *, task_id: str | None, queue_id: str | None,
           stats: Document | None, is_daemon: bool, task: Document | None,
           state: tuple[str | None, str | None] = (None, None), stats_time: float | None = None) -> None:
    """Record a status report: machine stats (kept as history, at `stats_time`, else now) and what the worker runs
    now. `task` is the task document when the worker may report on it: only then does the worker mark it as its own
    (tasks.stop trusts `last_worker`). `state` is what a Conveyor daemon says it does besides (WorkerState, and why)."""
    ts = now()
    if state[0] is not None:
        doc[STATE_FIELD], doc[STATE_REASON_FIELD] = state[0], state[1] or ""
    doc["last_report_time"] = iso(ts)
    doc["is_daemon"] = is_daemon
    if stats is not None:
        doc["machine_stats"] = {k: v for k, v in stats.items() if k in STATS_KEYS}
        conn.execute(s.worker_stats.insert().values(worker=worker, timestamp=stats_time or ts, task=task_id,
                                                    stats=dumps(doc["machine_stats"])))
    if task_id:
        if task is not None:
            if doc.get("task") != task_id:
                doc["task_started"] = iso(ts)
            task["last_worker"] = worker
            task["last_worker_report"] = task["last_update"] = iso(ts)
            save_task(conn, task)
    elif "task_started" in doc:
        del doc["task_started"]
    doc["task"] = task_id
    doc["queue"] = queue_id
    save(conn, worker, doc, task=task_id, queue=queue_id, current=True)


def forget(conn: Connection, worker: str) -> None:
    conn.execute(delete(s.workers).where(s.workers.c.id == worker))
    conn.execute(delete(s.runtime_properties).where(s.runtime_properties.c.worker == worker))


def alive(conn: Connection, last_seen: int | None = None) -> list[Row]:
    """Workers within their timeout (and, with `last_seen`, heard from within that many seconds), by id."""
    ts = now()
    query = select(s.workers).where(s.workers.c.last_seen + s.workers.c.timeout >= ts)
    if last_seen:
        query = query.where(s.workers.c.last_seen >= ts - last_seen)
    return list(conn.execute(query.order_by(s.workers.c.id)).all())


def reap(conn: Connection, at: float, requeued: set[str] | None = None) -> list[str]:
    """Forget workers that missed their timeout by `at` (epoch seconds) and fail the tasks they were running
    (`worker lost`, an infrastructure failure: retried when the task's `retries` allow, its queue then added to
    `requeued`). Returns those tasks."""
    lost: list[str] = []
    expired = conn.execute(select(s.workers.c.id, s.workers.c.task).where(
        s.workers.c.last_seen + s.workers.c.timeout < at)).all()
    for worker, task_id in expired:
        if task_id:
            task = get_task(conn, task_id, lock=True)
            if task and task.get("status") == TaskStatus.in_progress and task.get("last_worker") == worker:
                set_status(conn, task, TaskStatus.failed.value, force=True, reason=WORKER_LOST,
                           message=f"worker {worker} stopped reporting")
                queue = retries.after_failure(conn, task, FailureClass.infrastructure, reason=WORKER_LOST,
                                              worker=worker)
                if queue and requeued is not None:
                    requeued.add(queue)
                lost.append(task_id)
        forget(conn, worker)
    return lost

