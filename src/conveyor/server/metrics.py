"""`GET /metrics`: the server in Prometheus's text format.

What the database knows (queue depths and their oldest entry's age, tasks by status, workers alive) is read at
scrape time with a few grouped queries and kept for `CACHE_SEC`, so that several scrapers, or several server
processes on one database, cost the database little; each process adds its own counters (`server/traffic.py`).
No secret is a label: queues by name, endpoints by name, statuses. The endpoint needs no credentials, like most
exporters (the README says how to keep it to the monitoring network)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from conveyor.protocol.status import TaskStatus
from conveyor.server import traffic
from conveyor.server.store import Store
from conveyor.server.store import schema as s

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
CACHE_SEC = 1.0  # database figures are this fresh at most: a scrape storm reads the database once a second


class _DatabaseFigures(Collector):
    """Queue, task and worker figures from the database, plus this process's per-queue counters by queue name."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._metrics: list[Metric] = []
        self._names: dict[str, str] = {}  # queue id -> name, for the counters kept by id

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at > CACHE_SEC:
                self._metrics = self._read()
                self._read_at = time.monotonic()
            yield from self._metrics
            yield from self._counters()

    def _read(self) -> list[Metric]:
        now = time.time()
        depth = GaugeMetricFamily("conveyor_queue_entries", "Entries waiting in each queue", labels=["queue"])
        oldest = GaugeMetricFamily("conveyor_queue_oldest_entry_age_seconds",
                                   "Age of each queue's oldest entry (0 when it is empty)", labels=["queue"])
        statuses = GaugeMetricFamily("conveyor_tasks", "Tasks by status", labels=["status"])
        e, w = s.queue_entries.c, s.workers.c
        with self.store.read() as conn:
            names = {r.id: r.name for r in conn.execute(select(s.queues.c.id, s.queues.c.name))}
            entries = {r.queue: (int(r.n), float(r.first)) for r in conn.execute(
                select(e.queue, func.count().label("n"), func.min(e.added).label("first")).group_by(e.queue))}
            by_status = {r.status: int(r.n) for r in conn.execute(
                select(s.tasks.c.status, func.count().label("n")).group_by(s.tasks.c.status))}
            alive = conn.execute(select(func.count()).where(w.last_seen + w.timeout > now)).scalar() or 0
        self._names = names
        for queue_id, name in sorted(names.items(), key=lambda item: item[1]):
            n, first = entries.get(queue_id, (0, now))
            depth.add_metric([name], n)
            oldest.add_metric([name], max(now - first, 0.0) if n else 0.0)
        for status in [t.value for t in TaskStatus] + sorted(set(by_status) - {t.value for t in TaskStatus}):
            statuses.add_metric([status], by_status.get(status, 0))
        workers = GaugeMetricFamily("conveyor_workers_alive", "Workers heard from within their timeout",
                                    value=int(alive))
        return [depth, oldest, statuses, workers]

    def _counters(self) -> list[Metric]:
        enqueued, dequeued, waiting = traffic.counts()
        added = CounterMetricFamily("conveyor_queue_enqueued", "Entries added to each queue by this server process",
                                    labels=["queue"])
        popped = CounterMetricFamily("conveyor_queue_dequeued",
                                     "Entries popped from each queue by this server process", labels=["queue"])
        for family, counts in ((added, enqueued), (popped, dequeued)):
            for queue_id in sorted(set(counts) | set(self._names)):
                family.add_metric([self._names.get(queue_id, queue_id)], counts.get(queue_id, 0))
        polls = GaugeMetricFamily("conveyor_long_poll_waiting",
                                  "Long-polls (queues.get_next_task with wait) held by this server process now",
                                  value=waiting)
        return [added, popped, polls]


class ServerMetrics:
    """One per server process: its own series and the database's, in one answer."""

    def __init__(self, store: Store):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DatabaseFigures(store))

    def exposition(self) -> bytes:
        return generate_latest(traffic.REGISTRY) + generate_latest(self.registry)
