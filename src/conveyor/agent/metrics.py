"""The daemon's Prometheus endpoint (`agent.metrics_port`, GET /metrics): tasks pulled, how runs ended (by failure
class), the startup timeline's spans as histograms, tasks running and the GPUs held. Counters are this daemon's
since it started. Labels are queue names, span names, statuses and GPU indexes: nothing secret."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.agent.timeline import SPANS
from conveyor.errors import UserError
from conveyor.protocol import failure
from conveyor.protocol.status import FINAL_VALUES, TaskStatus

log = logging.getLogger(__name__)

UNKNOWN_CLASS = "unknown"  # a failure no class was given for (a ClearML-era client, an older agent)
# From a warm start (tenths of a second) to a cold environment build or a long run.
SPAN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                3600.0, 4 * 3600.0)
SPAN_NAMES = frozenset(SPANS.values()) | {"pickup", "total"}


class _Live(Collector):
    """What is true now, read at scrape time from the daemon."""

    def __init__(self, running: Callable[[], int], gpus: Callable[[], Mapping[str, float]]):
        self.running = running
        self.gpus = gpus

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("conveyor_agent_tasks_running", "Tasks this daemon runs now", value=self.running())
        held = GaugeMetricFamily("conveyor_agent_gpu_allocated",
                                 "Share of each of this daemon's GPUs given to its running tasks (0 to 1)",
                                 labels=["gpu"])
        for gpu, share in sorted(self.gpus().items()):
            held.add_metric([gpu], share)
        yield held


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pickups = Counter("conveyor_agent_pickups", "Tasks this daemon pulled and launched", ["queue"],
                               registry=self.registry)
        self.outcomes = Counter("conveyor_agent_task_outcomes", "Runs of this daemon by how they ended",
                                ["status", "failure_class"], registry=self.registry)
        self.spans = Histogram("conveyor_agent_phase_seconds",
                               "Spans of the startup timeline (queued, launch, checkout, environment, "
                               "entry_point_start, run) and enqueue to first output (pickup) and to the end (total)",
                               ["phase"], buckets=SPAN_BUCKETS, registry=self.registry)
        self._server: Any = None

    def watch(self, running: Callable[[], int], gpus: Callable[[], Mapping[str, float]]) -> None:
        self.registry.register(_Live(running, gpus))

    def serve(self, host: str, port: int) -> None:
        """Listen on host:port (a thread); a port in use is the operator's to fix, with a clear error."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {host}:{port}: {exc.strerror}; choose another "
                            "agent.metrics_port (each daemon on a machine needs its own), or 0 for none") from None
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ended(self, task: Mapping[str, Any]) -> None:
        """A run ended: its outcome, and the spans of the timeline its executor sent with the final status."""
        status = str(task.get("status") or "unknown")
        failure_class = task.get(failure.FIELD)
        attempts = task.get(failure.ATTEMPTS_FIELD) or []
        last = attempts[-1] if isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict) else {}
        if status not in FINAL_VALUES and last.get("retried"):  # failed, and already queued again for a retry
            status, failure_class = TaskStatus.failed.value, last.get(failure.FIELD)
        if status != TaskStatus.failed:
            failure_class = "none"
        failure_class = str(failure_class or UNKNOWN_CLASS)
        self.outcomes.labels(status, failure_class).inc()
        timeline = task.get("timeline")
        durations = timeline.get("durations") if isinstance(timeline, dict) else None
        for name, seconds in (durations or {}).items():
            if name in SPAN_NAMES and isinstance(seconds, (int, float)):
                self.spans.labels(name).observe(float(seconds))
