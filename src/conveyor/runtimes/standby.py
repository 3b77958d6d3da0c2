"""A standby executor: `conveyor execute --standby`, started ahead of time, with what a run imports already imported.

Starting Python and importing the executor costs more than the rest of a warm pickup; a standby pays it while the
daemon waits for work. The daemon hands it one task: a line on its stdin with the task id and the whole environment
the executor would have been started with, which it takes as its own before it reads its configuration. From there
it is the very same `conveyor execute --id T`, in a process of its own (its own session, pid and run record). Its
stdin closed without a task (the daemon stopped or died) ends it. It starts with the last run's environment and logs
in meanwhile; that session serves the task only if the task's environment configures the very same connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import BinaryIO

log = logging.getLogger(__name__)

STANDBY_FLAG = "--standby"
HANDOFF_SEC = 10.0  # a standby that has not read its task by then is given up for a fresh executor
# A standby is started as a run is launched; its imports (a core's worth for ~0.15 s) wait this long, unless its own
# task comes first, so that they do not slow that run's checkout and start (warm pickup p50 131 -> 97 ms here).
SETTLE_SEC = 0.15


class Standby:
    """One `execute --standby` process kept ready; `take` hands it a task, `refill` starts the next one."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def refill(self, env: Mapping[str, str] | None = None) -> None:
        """Start a standby executor unless one waits already (a failure to start one only costs the next run). `env`:
        the environment its task will likely get (the last one's), with which it prepares its connection."""
        if self.proc is not None and self.proc.poll() is None:
            return
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, start_new_session=True,
                                         env=None if env is None else dict(env))
        except OSError as exc:
            log.debug("no standby executor: %s", exc)
            self.proc = None

    def take(self, task_id: str, env: Mapping[str, str]) -> subprocess.Popen[bytes] | None:
        """The standby process, now running `task_id` with `env` as its environment; None when none is ready."""
        proc, self.proc = self.proc, None
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return None
        handoff = json.dumps({"task": task_id, "env": dict(env)}).encode() + b"\n"
        if not _handed(proc, handoff, HANDOFF_SEC):  # it died, or is stuck: the caller starts the executor afresh
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            return None
        return proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def close(self) -> None:
        """End the waiting standby: it holds no task, and a stopping daemon must not wait for its imports."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
            proc.kill()
        proc.wait()


def _handed(proc: subprocess.Popen[bytes], handoff: bytes, seconds: float) -> bool:
    """The handoff written and the standby's stdin closed within `seconds`. From a thread: the standby reads it only
    once its imports are done, and an environment larger than the pipe's buffer would hold the daemon's loop until
    then, or for good if the standby hangs (a slow or stuck file system)."""
    failed: list[OSError] = []

    def write() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(handoff)
            proc.stdin.close()
        except OSError as exc:
            failed.append(exc)

    writer = threading.Thread(target=write, name="standby-handoff", daemon=True)
    writer.start()
    writer.join(seconds)
    if writer.is_alive() or failed:
        log.warning("standby executor pid %s did not take its task (%s): starting one afresh", proc.pid,
                    failed[0] if failed else f"not read within {seconds:g} s")
        return False
    return True


def settle(stream: BinaryIO | None = None, seconds: float = SETTLE_SEC) -> None:
    """In the standby process, before its imports: wait `seconds`, or until the daemon writes (or closes) stdin."""
    with contextlib.suppress(OSError, ValueError):
        select.select([stream or sys.stdin.buffer], [], [], seconds)


def await_task(stream: BinaryIO | None = None) -> str | None:
    """In the standby process: wait for the daemon's task; take its environment; its id (None: stdin closed, no task).
    Stdin is /dev/null afterwards, as for an executor started for the task."""
    line = (stream or sys.stdin.buffer).readline()
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    if not line.strip():
        return None
    handed = json.loads(line)
    os.environ.clear()
    os.environ.update(handed["env"])
    return str(handed["task"])
