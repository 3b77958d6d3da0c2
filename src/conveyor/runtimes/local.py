"""Running `conveyor execute` as a local process: the venv-mode runtime."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import conveyor
from conveyor.errors import TaskFailure
from conveyor.runtimes.base import Leftover, TaskRun
from conveyor.runtimes.run_records import AdoptedExecutor, RunRecord, forget, records_of
from conveyor.runtimes.standby import STANDBY_FLAG, Standby

log = logging.getLogger(__name__)

# <bundle>/site/conveyor/__init__.py -> <bundle>/bin/conveyor, when Conveyor runs from a bundle (runtimes/bundle.py)
BUNDLE_LAUNCHER = Path(conveyor.__file__).resolve().parents[2] / "bin" / "conveyor"


class LocalRun:
    """A `conveyor execute` child process."""

    def __init__(self, task_id: str, proc: subprocess.Popen[bytes] | AdoptedExecutor,
                 on_end: Callable[[], None] | None = None):
        self.task_id = task_id
        self.proc = proc
        self._on_end = on_end  # once it has been reaped (the runtime readies the next standby executor)

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def start_failure(self) -> str | None:
        return None  # a process that started is an executor, which reports its own failures

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            try:
                forget(self.task_id)  # reaped: nothing left for a restarted daemon to adopt
            except OSError as exc:
                log.warning("task %s: could not remove its run record: %s", self.task_id, exc)
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end()
        return code

    def stop(self, grace: float) -> None:
        """SIGTERM: the executor ends its task within agent.kill_grace_sec and marks it stopped."""
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            log.debug("executor pid %s: already gone when asked to stop", self.proc.pid)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except (ProcessLookupError, OSError) as exc:
            log.debug("executor pid %s: could not be killed: %s", self.proc.pid, exc)

    def describe(self) -> str:
        return f"pid {self.proc.pid}"


@dataclass
class LocalRuntime:
    """Starts each task's executor in its own session, so that signals to the daemon's terminal do not reach it
    and the daemon decides how a task is stopped. A record per run on disk lets a restarted daemon adopt it. With
    `standby`, the next executor is started ahead of its task (standby.py) and handed the task when it comes."""

    config_file: str | None = None
    standby: bool = False
    _standby: Standby | None = field(default=None, init=False, repr=False)
    _last_env: dict[str, str] | None = field(default=None, init=False, repr=False)  # the last executor's
    _draining: bool = field(default=False, init=False, repr=False)

    def _conveyor(self) -> list[str]:
        # a daemon run from Conveyor's bundle (a service pod): its executors too, through the bundle's launcher
        cmd = [str(BUNDLE_LAUNCHER)] if BUNDLE_LAUNCHER.is_file() else [sys.executable, "-m", "conveyor"]
        return cmd + (["--config-file", self.config_file] if self.config_file else [])

    def command(self, task_id: str) -> list[str]:
        return self._conveyor() + ["execute", "--id", task_id]

    def standby_command(self) -> list[str]:
        return self._conveyor() + ["execute", STANDBY_FLAG]

    def describe(self) -> str:
        return ""

    def standby_pids(self) -> frozenset[int]:
        pid = self._standby.pid if self._standby is not None else None
        return frozenset() if pid is None else frozenset({pid})

    def drain(self) -> None:
        """The waiting standby ends (it holds no task), and a run that ends now starts none."""
        self._draining = True
        if self._standby is not None:
            self._standby.close()

    def _ready_next(self) -> None:
        if self.standby and not self._draining:
            if self._standby is None:
                self._standby = Standby(self.standby_command())
                atexit.register(self._standby.close)
            self._standby.refill(self._last_env)

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> LocalRun:
        full_env = self._last_env = {**os.environ, **env}
        proc = self._standby.take(run.task_id, full_env) if self._standby is not None else None
        try:
            if proc is None:
                proc = subprocess.Popen(self.command(run.task_id), env=full_env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        except OSError as exc:
            raise TaskFailure(f"the agent could not start the task: {exc.strerror}",
                              failure_class="infrastructure") from None
        if run.worker:
            try:
                RunRecord(run.task_id, run.queue_id, run.worker, run.sub_worker, proc.pid,
                          psutil.Process(proc.pid).create_time()).save()
            except (OSError, psutil.Error) as exc:  # the run goes on; only a restarted daemon would miss it
                log.warning("task %s: could not record its executor for adoption: %s", run.task_id, exc)
        self._ready_next()  # the next task's, ready by the time it comes (its start-up overlaps this run)
        return LocalRun(run.task_id, proc, self._ready_next)

    def adopt(self, worker: str) -> list[Leftover]:
        """Executors a killed daemon of this worker id started: those still running are adopted, the others gone.
        The first standby executor starts here, before any launch."""
        self._ready_next()
        found = []
        for record in records_of(worker):
            proc = record.process()
            if proc is not None:
                found.append(Leftover(record.task_id, record.queue_id, record.sub_worker,
                                      LocalRun(record.task_id, AdoptedExecutor(proc))))
                continue
            record.remove()
            found.append(Leftover(record.task_id, record.queue_id, record.sub_worker, None,
                                  "its executor was gone when the agent restarted"))
        return found
