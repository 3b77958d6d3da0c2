"""What a daemon leaves on disk about the executors it started, so that a daemon restarted with the same worker id
(after a crash, a SIGKILL) adopts them instead of running a second task beside them: one record per running task
under the agent folder, written at launch and removed when the executor has been reaped."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


def agent_dir() -> Path:
    """The agent's own folder on this machine (slots, run records, daemon logs)."""
    return Path(os.environ.get("CONVEYOR_AGENT_DIR", Path.home() / ".conveyor" / "agent"))


def runs_dir() -> Path:
    return agent_dir() / "runs"


@dataclass
class RunRecord:
    task_id: str
    queue_id: str
    worker: str  # the daemon's worker id
    sub_worker: str | None
    pid: int
    create_time: float  # with the pid: the same process, not a later one that got its number

    def save(self) -> None:
        folder = runs_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.task_id}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, folder / f"{self.task_id}.json")

    def remove(self) -> None:
        forget(self.task_id)

    def process(self) -> psutil.Process | None:
        """The executor, while it runs."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


def forget(task_id: str) -> None:
    """The task's executor has been reaped: nothing left to adopt."""
    (runs_dir() / f"{task_id}.json").unlink(missing_ok=True)


def records_of(worker: str) -> list[RunRecord]:
    found = []
    for path in sorted(runs_dir().glob("*.json")):
        try:
            record = RunRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if record.worker == worker:
            found.append(record)
    return found


class AdoptedExecutor:
    """An executor a previous daemon started, watched like a child (poll, send_signal) though it is not ours."""

    def __init__(self, proc: psutil.Process):
        self._proc = proc
        self.pid = proc.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                ended = not self._proc.is_running() or self._proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                ended = True
            if ended:
                self.returncode = 0  # its exit status went to its parent; the task's status says how it ended
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            self._proc.send_signal(sig)
        except psutil.NoSuchProcess:
            raise ProcessLookupError(self.pid) from None

    def kill(self) -> None:
        try:
            self._proc.kill()
        except psutil.NoSuchProcess:
            pass
