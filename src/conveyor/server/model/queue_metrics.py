"""The history of queues: each queue's length and its entries' average wait, sampled every few seconds by the
server's background loop, folded into 10-minute slots after the raw window, and read back per interval as ClearML's
`queues.get_queue_metrics` answers: the sample with the longest average wait stands for its interval."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.engine import Connection

from conveyor.server.model.workers import upsert_insert
from conveyor.server.store import schema as s

RAW = 0  # the resolution of samples as taken
FOLDED = 600  # seconds of a folded slot
ALL = "all"  # the series that stands for every queue when a call names none


def sample(conn: Connection, at: float, period: float, *, replace: bool = False) -> int:
    """Record every queue's length and average wait at `at` in the slot of `period` seconds it falls in. A slot
    already sampled (by another server process on this database) is kept, unless `replace`. Returns the slot."""

    slot = int(at // period * period)
    e = s.queue_entries.c
    waits = dict((r.queue, (int(r.length), float(r.wait or 0.0))) for r in conn.execute(
        select(e.queue, func.count().label("length"), func.avg(literal(at) - e.added).label("wait"))
        .group_by(e.queue)))
    for (queue_id,) in conn.execute(select(s.queues.c.id)):
        length, wait = waits.get(queue_id, (0, 0.0))
        insert = upsert_insert(conn, s.queue_metrics).values(queue=queue_id, resolution=RAW, slot=slot,
                                                             length=length, avg_waiting=max(wait, 0.0))
        if replace:
            conn.execute(insert.on_conflict_do_update(index_elements=["queue", "resolution", "slot"],
                                                      set_={"length": length, "avg_waiting": max(wait, 0.0)}))
        else:
            conn.execute(insert.on_conflict_do_nothing())
    return slot


def compact(conn: Connection, *, before: float, now: float, keep_days: float) -> int:
    """Fold raw samples older than `before` into 10-minute slots (the longest wait of a slot wins, with its length)
    and drop what is older than `keep_days`. Raw samples are claimed by deleting them, so several processes fold
    each once. Returns the samples folded."""

    m = s.queue_metrics.c
    rows = conn.execute(delete(s.queue_metrics).where(m.resolution == RAW, m.slot < before)
                        .returning(m.queue, m.slot, m.length, m.avg_waiting)).all()
    longest: dict[tuple[str, int], tuple[float, int]] = {}
    for r in rows:
        key = (r.queue, r.slot // FOLDED * FOLDED)
        if key not in longest or r.avg_waiting > longest[key][0]:
            longest[key] = (r.avg_waiting, r.length)
    for (queue_id, slot), (wait, length) in sorted(longest.items()):  # one lock order for every process
        conn.execute(upsert_insert(conn, s.queue_metrics).values(
            queue=queue_id, resolution=FOLDED, slot=slot, length=length, avg_waiting=wait).on_conflict_do_nothing())
        same = (m.queue == queue_id) & (m.resolution == FOLDED) & (m.slot == slot)
        conn.execute(update(s.queue_metrics).where(same, m.avg_waiting < wait).values(avg_waiting=wait, length=length))
    conn.execute(delete(s.queue_metrics).where(m.slot < now - keep_days * 86400))
    return len(rows)


@dataclass
class Series:
    queue: str
    points: dict[int, tuple[float, int]]  # interval start -> (the longest average wait, the length with it)

    def answer(self) -> dict[str, object]:
        dates = sorted(self.points)
        return {"queue": self.queue, "dates": dates,
                "avg_waiting_times": [round(self.points[d][0], 3) for d in dates],
                "queue_lengths": [self.points[d][1] for d in dates]}


def series(conn: Connection, from_date: float, to_date: float, interval: float,
           queue_ids: Iterable[str] | None) -> list[Series]:
    """Per queue (or, naming none, one `all` series averaged over the queues) and interval of the range, the sample
    with the longest average wait; intervals with no sample are left out."""
    ids = list(queue_ids or [])
    m = s.queue_metrics.c
    query = select(m.queue, m.slot, m.length, m.avg_waiting).where(m.slot >= from_date, m.slot <= to_date)
    if ids:
        query = query.where(m.queue.in_(ids))
    per_queue: dict[str, dict[int, tuple[float, int]]] = {qid: {} for qid in ids}
    for r in conn.execute(query):
        bucket = int(from_date + ((r.slot - from_date) // interval) * interval)
        points = per_queue.setdefault(r.queue, {})
        if bucket not in points or r.avg_waiting > points[bucket][0]:
            points[bucket] = (float(r.avg_waiting), int(r.length))
    if ids:
        return [Series(qid, per_queue[qid]) for qid in ids]
    together: dict[int, list[tuple[float, int]]] = {}
    for points in per_queue.values():
        for bucket, point in points.items():
            together.setdefault(bucket, []).append(point)
    return [Series(ALL, {b: (sum(p[0] for p in pts) / len(pts), round(sum(p[1] for p in pts) / len(pts)))
                         for b, pts in together.items()})]
