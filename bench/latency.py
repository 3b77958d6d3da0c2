"""What the glue benchmarks (slurm.py, k8s.py) share: timing a task's first log line, and printing a spread."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentkit import log_text  # noqa: E402

FIRST_LINE = "bench: first line"  # what the benchmarks' tasks print first


def first_line(client: Any, task: str, sent: float, timeout: float) -> float:
    """Seconds from `sent` (time.monotonic) until FIRST_LINE is in the task's log, polled every 20 ms."""
    deadline = time.monotonic() + timeout
    while True:
        if FIRST_LINE in log_text(client, task):
            return time.monotonic() - sent
        if time.monotonic() > deadline:
            doc = client.call("tasks.get_by_id", {"task": task})["task"]
            raise RuntimeError(f"task {task} never printed its first line ({doc['status']}: "
                               f"{doc.get('status_reason')} {doc.get('status_message')})")
        time.sleep(0.02)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f} s, p90 {pct(values, 0.9):.2f} s, "
            f"min {min(values):.2f}, max {max(values):.2f} over {len(values)}")
