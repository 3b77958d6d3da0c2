"""`GET /metrics`: the server in Prometheus's text format.

What the database knows (queue depths and their oldest entry's age, tasks by status, workers alive) is read at
scrape time with a few grouped queries and kept for `CACHE_SEC`, so that several scrapers, or several server
processes on one database, cost the database little; each process adds its own counters (`server/traffic.py`).
No secret is a label: queues by name, endpoints by name, statuses. The endpoint needs no credentials, like most
exporters (the README says how to keep it to the monitoring network).

Series stay bounded whatever users do: endpoints are the known ones, and queues beyond `max_queues` are summed into
one series labelled OTHER_QUEUES. The database's gauges label the first `max_queues` queues made by name, so that
every server process answers the same. A process's own counters give a queue a label for the life of the process
(the first made, then later ones as slots free up), so that a count never moves between series, which Prometheus
would read as a reset; the counts of a deleted queue of the summed series stay in it, and a deleted queue's own
series end with it. A renamed queue's series move to its new name, as with any label."""

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
OTHER_QUEUES = "(other queues)"  # the label of the queues beyond max_queues (a queue of this very name: its id)


class _DatabaseFigures(Collector):
    """Queue, task and worker figures from the database, plus this process's per-queue counters by queue name."""

    def __init__(self, store: Store, max_queues: int):
        self.store = store
        self.max_queues = max_queues
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._metrics: list[Metric] = []
        self._labels: dict[str, str] = {}  # queue id -> its label (its name, or OTHER_QUEUES), for the counters
        self._other_gone = (0, 0)  # (enqueued, dequeued) of deleted queues of OTHER_QUEUES: its counters keep them
        self._unlabelled: set[str] = set()  # counted queues missing from the last read (made since, or deleted)

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
        q = s.queues.c
        with self.store.read() as conn:
            names = {r.id: r.name for r in conn.execute(select(q.id, q.name).order_by(q.created, q.id))}
            entries = {r.queue: (int(r.n), float(r.first)) for r in conn.execute(
                select(e.queue, func.count().label("n"), func.min(e.added).label("first")).group_by(e.queue))}
            by_status = {r.status: int(r.n) for r in conn.execute(
                select(s.tasks.c.status, func.count().label("n")).group_by(s.tasks.c.status))}
            alive = conn.execute(select(func.count()).where(w.last_seen + w.timeout > now)).scalar() or 0
        self._forget(set(names))
        self._labels = _queue_labels(names, self._labels, self.max_queues)
        by_label: dict[str, tuple[int, float]] = {}  # label -> (entries, oldest entry's added)
        for queue_id, label in _queue_labels(names, {}, self.max_queues).items():
            n, first = entries.get(queue_id, (0, now))
            had_n, had_first = by_label.get(label, (0, now))
            by_label[label] = (had_n + n, min(had_first, first))
        for label, (n, first) in sorted(by_label.items()):
            depth.add_metric([label], n)
            oldest.add_metric([label], max(now - first, 0.0) if n else 0.0)
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
            by_label: dict[str, int] = dict.fromkeys(self._labels.values(), 0)
            gone = self._other_gone[0 if family is added else 1]
            if gone:
                by_label[OTHER_QUEUES] = by_label.get(OTHER_QUEUES, 0) + gone
            for queue_id, count in counts.items():
                label = self._labels.get(queue_id)  # None: a queue made since the last read (counted next time)
                if label is not None:
                    by_label[label] += count
            for label, count in sorted(by_label.items()):
                family.add_metric([label], count)
        polls = GaugeMetricFamily("conveyor_long_poll_waiting",
                                  "Long-polls (queues.get_next_task with wait) held by this server process now",
                                  value=waiting)
        return [added, popped, polls]

    def _forget(self, existing: set[str]) -> None:
        """Deleted queues (not in `existing`): their counts leave this process, those of OTHER_QUEUES' members staying
        in its counters. Counts of a queue no read saw (made and deleted in between) go once two reads missed it."""
        enqueued, dequeued, _ = traffic.counts()
        gone = set(self._labels) - existing
        missing = (set(enqueued) | set(dequeued)) - existing - gone
        gone |= missing & self._unlabelled
        self._unlabelled = missing - gone
        if not gone:
            return
        summed = [queue_id for queue_id in gone if self._labels.get(queue_id) == OTHER_QUEUES]
        self._other_gone = (self._other_gone[0] + sum(enqueued.get(q, 0) for q in summed),
                            self._other_gone[1] + sum(dequeued.get(q, 0) for q in summed))
        traffic.forget(gone)


def _queue_labels(names: dict[str, str], had: dict[str, str], max_queues: int) -> dict[str, str]:
    """Each queue's label: the one it had (its name, as it is now, or OTHER_QUEUES), else its name while fewer than
    `max_queues` queues have one of their own (in the order made: `names` is), else OTHER_QUEUES."""
    labels = {queue_id: had[queue_id] for queue_id in names if queue_id in had}
    own = sum(1 for label in labels.values() if label != OTHER_QUEUES)
    for queue_id, name in names.items():
        if labels.get(queue_id) == OTHER_QUEUES or (queue_id not in labels and own >= max_queues):
            labels[queue_id] = OTHER_QUEUES
            continue
        own += queue_id not in labels
        labels[queue_id] = queue_id if name == OTHER_QUEUES else name  # a queue of that very name: by its id
    return labels


class ServerMetrics:
    """One per server process: its own series and the database's, in one answer."""

    def __init__(self, store: Store, max_queues: int = 200):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DatabaseFigures(store, max_queues))

    def exposition(self) -> bytes:
        return generate_latest(traffic.REGISTRY) + generate_latest(self.registry)
