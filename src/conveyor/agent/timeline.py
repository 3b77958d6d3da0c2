"""The startup timeline of one run: when the task was enqueued, pulled, its code checked out, its environment ready,
its first line of output, and its end, with the span before each. The executor marks each moment where it happens
(a clock read, no call) and sends the whole with its final status (`tasks.completed|failed|stopped`, field
`timeline`): no round trip is added. The daemon turns it into histograms (agent/metrics.py); `conveyor task show`,
the UI's Timeline tab and `bench/pickup.py` read it from the task.

`enqueued` is the server's clock (the task's last `queued` status change); the rest are the worker's."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

# In order; a run may skip some (a prebuilt image checks nothing out, a task may print nothing).
MARKS = ("enqueued", "pulled", "started", "code_ready", "environment_ready", "first_output", "ended")
# The span that ends at each mark, by name: what it measures.
SPANS = {"pulled": "queued", "started": "launch", "code_ready": "checkout", "environment_ready": "environment",
         "first_output": "entry_point_start", "ended": "run"}
PULLED_AT_ENV = "CONVEYOR_PULLED_AT"  # epoch seconds the daemon popped the task, for its executor


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def epoch(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Timeline:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def mark(self, name: str, ts: float | None = None, *, first: bool = True) -> None:
        """Record `name` now (or at `ts`); with `first`, a mark already made stays."""
        if first and name in self.at:
            return
        self.at[name] = time.time() if ts is None else ts

    def enqueued_from(self, task: dict[str, Any]) -> None:
        """The last enqueue in the task's status history (the server's record of it)."""
        for change in reversed(task.get("status_history") or []):
            if isinstance(change, dict) and change.get("status") == "queued":
                ts = epoch(change.get("time"))
                if ts is not None:
                    self.mark("enqueued", ts)
                return

    def as_dict(self, worker: str) -> dict[str, Any]:
        """The task's `timeline` field: the marks in order with the span before each, and the spans by name."""
        marks: list[dict[str, Any]] = []
        durations: dict[str, float] = {}
        previous: float | None = None
        for name in MARKS:
            ts = self.at.get(name)
            if ts is None:
                continue
            span = None if previous is None else round(max(ts - previous, 0.0), 4)
            marks.append({"mark": name, "time": iso(ts), "after_sec": span})
            if span is not None:
                durations[SPANS[name]] = span
            previous = ts
        start, first, end = self.at.get("enqueued"), self.at.get("first_output"), self.at.get("ended")
        if start is not None and first is not None:
            durations["pickup"] = round(max(first - start, 0.0), 4)  # enqueue -> first line: bench/pickup.py's figure
        if start is not None and end is not None:
            durations["total"] = round(max(end - start, 0.0), 4)
        return {"worker": worker, "marks": marks, "durations": durations}
