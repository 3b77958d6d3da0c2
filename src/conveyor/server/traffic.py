"""What one server process counts as it serves: entries added and popped per queue, long-polls waiting, and each
endpoint's latency. Counters are per process (Prometheus sums them over the processes it scrapes); what the database
knows (queue depths, tasks by status, workers alive) is read at scrape time by `server/metrics.py`."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)  # this process's own series, apart from any other library's
ProcessCollector(registry=REGISTRY)  # RSS, CPU, open files of this server process

# From a loopback SQLite call (~1 ms) to a long-poll held for its whole wait (seconds).
REQUEST_SECONDS = Histogram(
    "conveyor_request_duration_seconds", "API calls by endpoint: time from the body read to the answer built",
    ["endpoint"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))

_lock = threading.Lock()
enqueued: Counter[str] = Counter()  # queue id -> entries added (enqueues, put-backs, re-enqueues)
dequeued: Counter[str] = Counter()  # queue id -> entries popped by queues.get_next_task
_waiting = 0  # long-polls of this process holding their request now


def count_enqueued(queue_id: str) -> None:
    with _lock:
        enqueued[queue_id] += 1


def count_dequeued(queue_id: str) -> None:
    with _lock:
        dequeued[queue_id] += 1


def counts() -> tuple[dict[str, int], dict[str, int], int]:
    """A consistent copy: (enqueued per queue id, dequeued per queue id, long-polls waiting)."""
    with _lock:
        return dict(enqueued), dict(dequeued), _waiting


def forget(queue_ids: set[str]) -> None:
    """Drop the counts of queues that are gone."""
    with _lock:
        for queue_id in queue_ids:
            enqueued.pop(queue_id, None)
            dequeued.pop(queue_id, None)


@contextmanager
def long_poll_waiting() -> Iterator[None]:
    global _waiting
    with _lock:
        _waiting += 1
    try:
        yield
    finally:
        with _lock:
            _waiting -= 1
