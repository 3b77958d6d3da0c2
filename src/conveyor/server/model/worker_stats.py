"""The history of workers' machine stats: raw reports for the recent window, folded into per-minute buckets (kept a
day) and per-10-minute buckets (kept `keep_days`) beyond it, and the range queries behind the Orchestration charts.

A raw report is deleted as it is folded (DELETE ... RETURNING), so that of several server processes sweeping one
database each report is folded once, and a range query may add raw rows and one tier of buckets without counting
any report twice."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, tuple_, update
from sqlalchemy.engine import Connection

from conveyor.server.codec import Document, dumps, loads
from conveyor.server.model.workers import upsert_insert
from conveyor.server.store import schema as s

MINUTE, TEN_MINUTES = 60, 600
MINUTE_KEEP_SEC = 86400  # per-minute buckets answer ranges within the last day; older ones only the 10-minute tier
TOTAL = "total"  # the variant of a stat that is one number (lists are split by index: "0", "1", ...)
AGGREGATIONS = ("avg", "min", "max")
MERGE_CHUNK = 500  # buckets read (and locked) per statement when folding

# [min, max, sum, count] of one metric variant
Summary = list[float]


def variants(stats: Document) -> Iterator[tuple[str, str, float]]:
    """(metric, variant, value) of one report's stats, as ClearML splits them: one number is variant `total`,
    a list (per CPU core, per GPU) one variant per index."""
    for metric, value in stats.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield metric, TOTAL, float(value)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield metric, str(index), float(item)


def _fold(into: dict[str, dict[str, Summary]], metric: str, variant: str, summary: Summary) -> None:
    old = into.setdefault(metric, {}).get(variant)
    if old is None:
        into[metric][variant] = list(summary)
    else:
        into[metric][variant] = [min(old[0], summary[0]), max(old[1], summary[1]), old[2] + summary[2],
                                 old[3] + summary[3]]


@dataclass
class _Bucket:
    active: bool = False
    stats: dict[str, dict[str, Summary]] = field(default_factory=dict)


def compact(conn: Connection, *, before: float, keep_per_worker: int, now: float, keep_days: float) -> int:
    """Fold raw reports older than `before`, and those beyond the newest `keep_per_worker` of a worker, into the
    per-minute and per-10-minute buckets; drop buckets past their tier's retention. Returns the reports folded."""
    w = s.worker_stats.c
    old = [w.timestamp < before]
    for (worker,) in conn.execute(select(w.worker).group_by(w.worker).having(func.count() > keep_per_worker)).all():
        cutoff = conn.execute(select(w.timestamp, w.seq).where(w.worker == worker)
                              .order_by(w.timestamp.desc(), w.seq.desc()).offset(keep_per_worker).limit(1)).first()
        if cutoff is not None:  # the newest by time: a backfilled report may arrive after newer ones
            old.append((w.worker == worker) & ((w.timestamp < cutoff.timestamp) | (
                (w.timestamp == cutoff.timestamp) & (w.seq <= cutoff.seq))))
    rows = conn.execute(delete(s.worker_stats).where(or_(*old)).returning(w.worker, w.timestamp, w.task,
                                                                           w.stats)).all()
    buckets: dict[tuple[str, int, float], _Bucket] = {}
    for r in rows:
        for resolution in (MINUTE, TEN_MINUTES):
            if resolution == MINUTE and r.timestamp < now - MINUTE_KEEP_SEC:
                continue  # past the per-minute tier's retention already
            bucket = buckets.setdefault((r.worker, resolution, r.timestamp // resolution * resolution), _Bucket())
            bucket.active = bucket.active or bool(r.task)
            for metric, variant, value in variants(loads(r.stats) or {}):
                _fold(bucket.stats, metric, variant, [value, value, value, 1.0])
    if buckets:
        _merge(conn, buckets)
    r_ = s.worker_stats_rollup.c
    conn.execute(delete(s.worker_stats_rollup).where(r_.resolution == MINUTE, r_.bucket < now - MINUTE_KEEP_SEC))
    conn.execute(delete(s.worker_stats_rollup).where(r_.bucket < now - keep_days * 86400))
    conn.execute(delete(s.worker_stats).where(w.timestamp < now - keep_days * 86400))
    return len(rows)


def _merge(conn: Connection, buckets: dict[tuple[str, int, float], _Bucket]) -> None:
    """Add buckets' summaries to their stored rows, creating those missing first, then reading them under a row
    lock (another process may fold into the same buckets); a few statements whatever the number of buckets."""
    r = s.worker_stats_rollup.c
    keys = sorted(buckets)  # one lock order for every process
    conn.execute(upsert_insert(conn, s.worker_stats_rollup).on_conflict_do_nothing(),
                 [{"worker": k[0], "resolution": k[1], "bucket": k[2], "active": 0, "stats": "{}"} for k in keys])
    # exactly these buckets (a late report's bucket is days before the others': not every bucket in between)
    stored: list[Any] = []
    for start in range(0, len(keys), MERGE_CHUNK):
        chunk = keys[start:start + MERGE_CHUNK]
        stored += conn.execute(select(r.worker, r.resolution, r.bucket, r.active, r.stats).where(
            tuple_(r.worker, r.resolution, r.bucket).in_(chunk),
        ).order_by(r.worker, r.resolution, r.bucket).with_for_update()).all()
    changes = []
    for row in stored:
        bucket = buckets.get((row.worker, row.resolution, row.bucket))
        if bucket is None:
            continue
        stats: dict[str, dict[str, Summary]] = loads(row.stats) or {}
        for metric, by_variant in bucket.stats.items():
            for variant, summary in by_variant.items():
                _fold(stats, metric, variant, summary)
        changes.append({"w": row.worker, "res": row.resolution, "b": row.bucket,
                        "a": int(bool(row.active) or bucket.active), "s": dumps(stats)})
    conn.execute(update(s.worker_stats_rollup).where(r.worker == bindparam("w"), r.resolution == bindparam("res"),
                                                     r.bucket == bindparam("b"))
                 .values(active=bindparam("a"), stats=bindparam("s")), changes)


def tier(from_date: float, interval: float, now: float) -> int:
    """Which buckets answer a range besides the raw reports: minutes for a recent range asked finely, else 10 min."""
    return MINUTE if interval < TEN_MINUTES and from_date >= now - MINUTE_KEEP_SEC else TEN_MINUTES


@dataclass(frozen=True)
class Sample:
    """Raw reports and folded buckets alike: a worker's summaries at a time."""
    worker: str
    timestamp: float
    active: bool
    stats: dict[str, dict[str, Summary]]


def samples(conn: Connection, from_date: float, to_date: float, worker_ids: Iterable[str] | None, *,
            resolution: int, with_stats: bool = True) -> Iterator[Sample]:
    """The raw reports and the buckets of `resolution` within the range, for the named workers (or all)."""
    w = s.worker_stats.c
    ids = list(worker_ids or [])
    raw = select(w.worker, w.timestamp, w.task, *([w.stats] if with_stats else [])).where(
        w.timestamp >= from_date, w.timestamp <= to_date)
    if ids:
        raw = raw.where(w.worker.in_(ids))
    for row in conn.execute(raw):
        stats: dict[str, dict[str, Summary]] = {}
        if with_stats:
            for metric, variant, value in variants(loads(row.stats) or {}):
                stats.setdefault(metric, {})[variant] = [value, value, value, 1.0]
        yield Sample(row.worker, row.timestamp, bool(row.task), stats)
    r = s.worker_stats_rollup.c
    folded = select(r.worker, r.bucket, r.active, *([r.stats] if with_stats else [])).where(
        r.resolution == resolution, r.bucket >= from_date, r.bucket <= to_date)
    if ids:
        folded = folded.where(r.worker.in_(ids))
    for row in conn.execute(folded):
        yield Sample(row.worker, row.bucket, bool(row.active), (loads(row.stats) or {}) if with_stats else {})


def metric_keys(conn: Connection, worker_ids: list[str] | None) -> set[str]:
    """The stats keys the workers reported: in their recent raw reports and their 10-minute buckets."""
    keys: set[str] = set()
    w = s.worker_stats.c
    raw = select(w.stats).order_by(w.seq.desc()).limit(500)
    r = s.worker_stats_rollup.c
    folded = select(r.stats).where(r.resolution == TEN_MINUTES).order_by(r.bucket.desc()).limit(500)
    if worker_ids:
        raw, folded = raw.where(w.worker.in_(worker_ids)), folded.where(r.worker.in_(worker_ids))
    for query in (raw, folded):
        for (stats,) in conn.execute(query):
            keys.update(loads(stats) or {})
    return keys


def categories(keys: Iterable[str]) -> list[dict[str, Any]]:
    """ClearML's grouping of stats keys: by the word before the first underscore (cpu, gpu, memory, ...)."""
    grouped: dict[str, list[str]] = {}
    for key in sorted(keys):
        grouped.setdefault(key.partition("_")[0], []).append(key)
    return [{"name": name, "metric_keys": metric_keys} for name, metric_keys in sorted(grouped.items())]
