"""Running `conveyor execute` as a local process: the venv-mode runtime."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

import conveyor
from conveyor.errors import TaskFailure
from conveyor.runtimes.base import Leftover, TaskRun
from conveyor.runtimes.run_records import AdoptedExecutor, RunRecord, forget, records_of

log = logging.getLogger(__name__)

# <bundle>/site/conveyor/__init__.py -> <bundle>/bin/conveyor, when Conveyor runs from a bundle (runtimes/bundle.py)
BUNDLE_LAUNCHER = Path(conveyor.__file__).resolve().parents[2] / "bin" / "conveyor"


class LocalRun:
    """A `conveyor execute` child process."""

    def __init__(self, task_id: str, proc: subprocess.Popen[bytes] | AdoptedExecutor):
        self.task_id = task_id
        self.proc = proc

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
    and the daemon decides how a task is stopped. A record per run on disk lets a restarted daemon adopt it."""

    config_file: str | None = None

    def command(self, task_id: str) -> list[str]:
        # a daemon run from Conveyor's bundle (a service pod): its executors too, through the bundle's launcher
        cmd = [str(BUNDLE_LAUNCHER)] if BUNDLE_LAUNCHER.is_file() else [sys.executable, "-m", "conveyor"]
        if self.config_file:
            cmd += ["--config-file", self.config_file]
        return cmd + ["execute", "--id", task_id]

    def describe(self) -> str:
        return ""

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> LocalRun:
        try:
            proc = subprocess.Popen(self.command(run.task_id), env={**os.environ, **env}, stdin=subprocess.DEVNULL,
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
        return LocalRun(run.task_id, proc)

    def adopt(self, worker: str) -> list[Leftover]:
        """Executors a killed daemon of this worker id started: those still running are adopted, the others gone."""
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
