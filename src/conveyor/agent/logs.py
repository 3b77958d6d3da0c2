"""Shipping a task's output to the server: in order, at most a flush interval late, retried with backoff while
the server is unreachable, in bounded memory (writers wait when the buffer is full, until the task is being
stopped), and each line once: every event carries a client id the Conveyor server de-duplicates on, so a batch
retried after a lost answer adds nothing twice (a ClearML server ignores the field). A batch the server refuses
for good (a 4xx answer) is sent again with its text made plain ASCII, then dropped with a line saying so: it never
holds up the lines after it."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor.client.errors import ApiCallError
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.agent")

MAX_EVENT_BYTES = 64 * 1024  # the reference caps one log event's msg at 64 KiB
MAX_BATCH_BYTES = 1024 * 1024  # and one packet at 1 MiB


class EventSink(Protocol):
    def call_lines(self, endpoint: str, events: list[dict[str, Any]]) -> dict[str, Any]: ...


@dataclass
class _Event:
    level: str
    msg: str
    timestamp: int
    size: int
    client_id: str
    in_flight: bool = False  # being sent: later lines start a new event


def send_line(sink: EventSink, task_id: str, worker: str, msg: str, level: str = "info") -> None:
    """One line in a task's log at once, outside any LogShipper (the daemon's and the container set-up's own
    lines). `msg` ends with a newline. Raises what the client raises."""
    sink.call_lines("events.add_batch", [{"type": "log", "task": task_id, "level": level, "worker": worker,
                                          "timestamp": int(time.time() * 1000), "msg": msg}])


def decode_output(raw: bytes) -> str:
    """A process's bytes as log text that keeps every byte: invalid UTF-8 as `\\xff`, NUL as `\\x00` (neither
    travels or stores safely as text)."""
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00") if "\x00" in text else text


_NOT_PLAIN = re.compile(r"[^\t\n\x20-\x7e]")


def plain(text: str) -> str:
    """The text with everything but printable ASCII escaped: what any server stores."""
    return _NOT_PLAIN.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class _PartlyAdded(ConveyorError):
    """The server answered, but added fewer events than sent: it found some invalid."""


def _refused_for_good(exc: ConveyorError) -> bool:
    """A 4xx answer other than auth and rate limits, or events the server found invalid: the same next time."""
    if isinstance(exc, _PartlyAdded):
        return True
    return isinstance(exc, ApiCallError) and 400 <= exc.code < 500 and exc.code not in (401, 408, 429)


def clean_line(line: str) -> str:
    """Keep what a terminal would show of a line rewritten with carriage returns (progress bars); drop backspaces."""
    body = line[:-1] if line.endswith("\n") else line
    if "\r" in body:
        body = body.rstrip("\r").rsplit("\r", 1)[-1]
    return body.replace("\x08", "") + ("\n" if line.endswith("\n") else "")


class LogShipper:
    def __init__(self, sink: EventSink, task_id: str, worker: str, *, flush_interval: float = 0.5,
                 max_bytes: int = 16 * 1024 * 1024, suppress_carriage_return: bool = True):
        self.sink = sink
        self.task_id = task_id
        self.worker = worker
        self.flush_interval = flush_interval
        self.max_bytes = max_bytes
        self.suppress_cr = suppress_carriage_return
        self._session = secrets.token_hex(6)
        self._counter = 0
        self._pending: deque[_Event] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._first_pending_at: float | None = None
        self._writers_released = False  # set when the task is being stopped: writes never wait any more
        self.sent_events = 0
        self.failures = 0
        self.dropped_events = 0
        self._thread = threading.Thread(target=self._run, name=f"logs-{task_id[:8]}", daemon=True)
        self._thread.start()

    # --- producers ----------------------------------------------------------------------------------------------
    def write(self, text: str, level: str = "debug") -> None:
        """Queue task output (whole lines); blocks while the buffer is full, so nothing is dropped."""
        if self.suppress_cr:
            text = "".join(clean_line(line) for line in text.splitlines(keepends=True))
        if not text:
            return
        for start in range(0, len(text), MAX_EVENT_BYTES):
            self._put(level, text[start:start + MAX_EVENT_BYTES])

    def notice(self, msg: str, level: str = "info") -> None:
        """One line of the agent's own (phases, reasons); shown in the task's log like the reference's INFO lines."""
        self.write(msg if msg.endswith("\n") else msg + "\n", level)

    def _put(self, level: str, msg: str) -> None:
        size = len(msg.encode("utf-8", "replace"))
        with self._cond:
            while self._bytes + size > self.max_bytes and self._pending and not (self._closing or
                                                                                 self._writers_released):
                self._cond.wait(0.5)  # backpressure: the task's writes wait for the server to take lines
            # Consecutive lines of one level travel as one event, as the reference sends them.
            last = self._pending[-1] if self._pending else None
            if last is not None and last.level == level and last.size + size <= MAX_EVENT_BYTES and not last.in_flight:
                last.msg += msg
                last.size += size
            else:
                self._counter += 1
                self._pending.append(_Event(level, msg, int(time.time() * 1000), size,
                                            f"{self._session}-{self._counter}"))
            self._bytes += size
            if self._first_pending_at is None:
                self._first_pending_at = time.monotonic()
            self._cond.notify_all()

    # --- the sender ---------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Event]:
        batch: list[_Event] = []
        size = 0
        for event in self._pending:
            if batch and size + event.size > MAX_BATCH_BYTES:
                break
            batch.append(event)
            size += event.size
        for event in batch:
            event.in_flight = True
        return batch

    def _run(self) -> None:
        backoff = 0.25
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
                if not self._closing:
                    due = (self._first_pending_at or time.monotonic()) + self.flush_interval
                    while not self._closing and time.monotonic() < due and self._bytes < MAX_BATCH_BYTES:
                        self._cond.wait(max(0.0, due - time.monotonic()))
                batch = self._take_batch()
            events = [{"type": "log", "task": self.task_id, "level": e.level, "worker": self.worker,
                       "msg": e.msg, "timestamp": e.timestamp, "conveyor_id": e.client_id} for e in batch]
            try:
                self._send(events)
            except Exception as exc:  # unreachable, refusing, or a fault: keep the lines, retry with backoff
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.warning("sending task log failed (%s: %s); retrying", exc.__class__.__name__, exc,
                                exc_info=not isinstance(exc, ConveyorError))
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.25
            with self._cond:
                for event in batch:
                    self._pending.popleft()
                    self._bytes -= event.size
                self.sent_events += len(batch)
                self._first_pending_at = time.monotonic() if self._pending else None
                self._cond.notify_all()

    def _send(self, events: list[dict[str, Any]]) -> None:
        """Send one batch; one refused for good goes again as plain ASCII, then is dropped with a notice."""
        first: ConveyorError | None = None
        for as_plain in (False, True):  # the plain copy only after a refusal: most batches go through at once
            attempt = [{**e, "msg": plain(e["msg"])} for e in events] if as_plain else events
            try:
                self._check(self.sink.call_lines("events.add_batch", attempt), events)
                return
            except ConveyorError as exc:
                if not _refused_for_good(exc):
                    raise
                first = first or exc
        self.dropped_events += len(events)
        log.warning("the server refused %d log events for good (%s); they were dropped", len(events), first)
        notice = {**events[-1], "level": "error", "conveyor_id": f"{events[-1]['conveyor_id']}-dropped",
                  "msg": f"conveyor: the server refused {len(events)} log events and they were dropped: {first}\n"}
        try:
            self.sink.call_lines("events.add_batch", [notice])
        except ConveyorError as exc:
            log.warning("could not add the notice of dropped log events: %s", exc)

    @staticmethod
    def _check(answer: dict[str, Any], events: list[dict[str, Any]]) -> None:
        if int(answer.get("added", -1)) < len(events):
            raise _PartlyAdded(f"the server added {answer.get('added')} of {len(events)} log events "
                               f"({answer.get('errors_info') or 'no reason given'})")

    def release_writers(self) -> None:
        """The task is being stopped: writes no longer wait for room (memory may pass max_bytes until it ends),
        so that nothing the task prints can hold up its abort."""
        with self._cond:
            self._writers_released = True
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued line is on the server; False if that did not happen within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._first_pending_at = 0.0  # send what is queued now, without waiting out the interval
            self._cond.notify_all()
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                self._first_pending_at = 0.0
            return not self._pending

    def close(self, timeout: float = 30.0) -> bool:
        sent = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(1.0)
        return sent
