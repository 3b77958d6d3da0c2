"""A run's startup timeline (`timeline` on the task): sent by the agent with the run's final status, shown by
`conveyor task show` and the UI. The server keeps what it was given after checking its shape and size: the agent's
agent/timeline.py writes it, and only a Conveyor agent sends it (the server's token advertises `timeline`)."""

from __future__ import annotations

from typing import Any

from conveyor.protocol import errors

MAX_MARKS = 16
MAX_TEXT = 64  # a mark's or span's name, an ISO time
MAX_WORKER = 512  # as a worker id column holds


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _seconds(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def checked(value: Any) -> dict[str, Any]:
    """The timeline as stored, or a 400 that says what is wrong with it."""
    problem = "must be an object {worker, marks: [{mark, time, after_sec}], durations: {name: seconds}}"
    if not isinstance(value, dict):
        raise errors.validation_error(f"timeline {problem}")
    marks, durations, worker = value.get("marks") or [], value.get("durations") or {}, value.get("worker") or ""
    if not (isinstance(marks, list) and len(marks) <= MAX_MARKS and all(
            isinstance(m, dict) and _text(m.get("mark")) and _text(m.get("time")) and _seconds(m.get("after_sec"))
            for m in marks)):
        raise errors.validation_error(f"timeline.marks: at most {MAX_MARKS}; the timeline {problem}")
    if not (isinstance(durations, dict) and len(durations) <= MAX_MARKS and all(
            _text(k) and _seconds(v) for k, v in durations.items())):
        raise errors.validation_error(f"timeline.durations: at most {MAX_MARKS}; the timeline {problem}")
    if not (isinstance(worker, str) and len(worker) <= MAX_WORKER):
        raise errors.validation_error(f"timeline.worker: a name of at most {MAX_WORKER} characters")
    return {"worker": worker,
            "marks": [{"mark": m["mark"], "time": m["time"], "after_sec": m.get("after_sec")} for m in marks],
            "durations": dict(durations)}
