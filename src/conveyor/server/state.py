"""What a running server process holds: the store, the authenticator, the long-poll signals and its settings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.server.auth import Authenticator
from conveyor.server.store import Store
from conveyor.server.store.notify import QueueSignals


@dataclass
class ServerSettings:
    worker_timeout_sec: int
    long_poll_max_sec: float
    worker_stats_history: int
    worker_stats_raw_sec: float  # reports older than this are folded into per-minute and per-10-minute buckets
    worker_stats_keep_days: float  # worker stats and queue metrics older than this are dropped
    queue_metrics_sample_sec: float  # between samples of queue lengths and waits
    token_ttl_sec: int
    task_update_timeout_sec: int  # a task whose worker was not heard from this long is stopped outright
    reap_interval_sec: float
    unstarted_requeue_sec: float  # a popped task not started within this is put back at the front of its queue
    retry_elsewhere_sec: float  # the worker a retried task failed on skips it this long
    max_request_body_mb: float  # larger API bodies are refused with 413 while they stream in
    max_json_depth: int  # deeper nesting in a body is a 400
    default_page_size: int  # items of a get_all that asks for no page (and names no ids)
    max_page_size: int  # the largest page_size a get_all may ask for
    name_filter_timeout_sec: float  # a name regex that takes longer is refused with 400
    metrics_max_queues: int = 200  # GET /metrics labels this many queues one by one, the rest as one series


class ServerState:
    def __init__(self, store: Store, auth: Authenticator, settings: ServerSettings):
        self.store = store
        self.auth = auth
        self.settings = settings
        self.signals = QueueSignals()
        self.known_queues: set[str] = set()  # queue ids seen to exist: the pop checks its ids without a query

    def wake(self, queue_ids: Iterable[str]) -> None:
        """Call after the commit that added entries: wakes this process's long-polls at once."""
        for qid in queue_ids:
            self.signals.notify(qid)
