"""Old console logs out of the database (`conveyor gc --server-logs-older-than 30d`, run on the server's host).

Only the `log` events of tasks that ended (a final status) and were last updated before the cutoff go: a running
task keeps its whole log, and scalars, plots and debug samples (the experiment's results) stay. A direct pass over
the database rather than an API call: it is an operator's job on the server's machine, may delete millions of
rows in batches, and needs no credentials beyond the database's own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, select

from conveyor.protocol.status import FINAL_VALUES
from conveyor.server.store import Store
from conveyor.server.store import schema as s

log = logging.getLogger("conveyor.server.retention")

BATCH_TASKS = 200  # tasks per delete transaction: a short lock on SQLite, a bounded transaction on PostgreSQL


@dataclass
class LogPrune:
    tasks: int  # tasks whose logs went (or would go)
    lines: int
    bytes: int  # of message text: roughly what the database frees


def prune_logs(db: Store, older_than_sec: float, *, dry_run: bool, now: float | None = None) -> LogPrune:
    cutoff = (time.time() if now is None else now) - older_than_sec
    ended = and_(s.tasks.c.status.in_(sorted(FINAL_VALUES)), s.tasks.c.last_update < cutoff)
    logs = and_(s.events.c.task == s.tasks.c.id, s.events.c.type == "log")
    with db.read() as conn:
        rows = conn.execute(
            select(s.tasks.c.id, func.count(s.events.c.seq), func.coalesce(func.sum(func.length(s.events.c.msg)), 0))
            .select_from(s.tasks.join(s.events, logs)).where(ended).group_by(s.tasks.c.id)).all()
    found = LogPrune(len(rows), sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows))
    if dry_run:
        return found
    ids = [r[0] for r in rows]
    for start in range(0, len(ids), BATCH_TASKS):
        batch = ids[start:start + BATCH_TASKS]
        with db.write() as conn:  # ended still: a task enqueued again since the count keeps its new log
            conn.execute(delete(s.events).where(
                s.events.c.task.in_(select(s.tasks.c.id).where(ended, s.tasks.c.id.in_(batch))),
                s.events.c.type == "log"))
    log.info("gc: removed %d log lines of %d ended tasks", found.lines, found.tasks)
    return found
