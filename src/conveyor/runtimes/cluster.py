"""What the cluster runtimes (Slurm jobs, Kubernetes Jobs) share: a job per task, watched from outside.

A cluster job is a `RunHandle` whose executor runs elsewhere. The glue (`agent/cluster_glue.py`) reads each job's
`view()` (waiting and why, running and where) and, once it ended, its `final` end: whether the cluster ended it (a
time limit, a cancel by someone else, an eviction, memory) and with what reason. A record per job under the agent
folder says which job runs which task, so that a glue restarted with the same worker id adopts its jobs.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from conveyor.errors import InternalError
from conveyor.runtimes.base import Leftover, TaskRun
from conveyor.runtimes.run_records import agent_dir

log = logging.getLogger(__name__)


class ClusterError(InternalError):
    """The cluster, not the task, is the trouble (its controller unreachable, a command missing): the task goes back
    to its queue."""


@dataclass(frozen=True)
class JobView:
    """A job as the cluster shows it while it lasts."""

    phase: str  # "pending", "running" or "ended"
    reason: str = ""  # why it waits (Resources, Unschedulable: ...), or the cluster's state word
    where: str = ""  # the nodes it runs on
    fatal: str = ""  # a waiting job that can never start (an image that cannot be pulled): the task fails with it
    unit: str = ""  # what runs the job, where the cluster names it apart (a Kubernetes pod)

    @property
    def ended(self) -> bool:
        return self.phase == "ended"


@dataclass(frozen=True)
class JobEnd:
    """How a job ended."""

    killed: bool  # the cluster ended it (time limit, cancel, eviction, memory): the task fails with `reason`
    reason: str  # `slurm: TIMEOUT after 00:05:00`, `k8s: pod OOMKilled (exit code 137)`
    exit_status: int = 1


@dataclass
class JobRecord:
    """Written before the job is created (job_id "") and again with its id: a glue killed in between finds the job
    by the marks the runtime gives it, or creates it for the task, still pending for it, again."""

    task_id: str
    queue_id: str
    worker: str
    job_id: str = ""
    cancelled: bool = False  # the glue cancelled it (the task was aborted or dequeued): its end is not a failure
    kind: str = "slurm"
    # the number of the task's last failed attempt when the job was submitted (None: unknown): a higher one when the
    # job ends means its executor's run failed and the server already re-queued the task (a retry), not ours to fail
    attempts: int | None = None

    @staticmethod
    def folder(kind: str) -> Path:
        return agent_dir() / f"{kind}-jobs"

    def _path(self) -> Path:
        return self.folder(self.kind) / f"{self.task_id}.json"

    def save(self) -> None:
        folder = self.folder(self.kind)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.task_id}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, self._path())

    def save_quietly(self) -> None:
        try:
            self.save()
        except OSError as exc:  # only a restarted glue would miss it
            log.warning("task %s: could not record its job: %s", self.task_id, exc)

    def remove(self) -> None:
        self._path().unlink(missing_ok=True)

    @classmethod
    def of(cls, kind: str, worker: str | None) -> list[JobRecord]:
        """The records of the glue with this worker id; of every glue of this kind with None."""
        found = []
        for path in sorted(cls.folder(kind).glob("*.json")):
            try:
                record = cls(**{"kind": kind, **json.loads(path.read_text())})
            except (OSError, ValueError, TypeError):
                log.warning("ignoring the unreadable job record %s", path)
                continue
            if worker is None or record.worker == worker:
                found.append(record)
        return found


class ClusterJob(ABC):
    """One task's job. Subclasses say how the cluster shows it (`view`), how it ended (`ended`) and cancel it."""

    def __init__(self, record: JobRecord):
        self.record = record
        self.final: JobEnd | None = None

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def pid(self) -> int | None:
        return None  # nothing of it runs on the glue's machine

    @property
    def start_failure(self) -> str | None:
        return self.final.reason if self.final is not None else None

    @abstractmethod
    def view(self) -> JobView | None:
        """The job while the cluster lists it; None once it is gone."""

    @abstractmethod
    def ended(self, last: JobView | None) -> JobEnd | None:
        """How the job ended, once `view` said so or no longer lists it; None if the cluster says it has not (a
        look at the job list older than the job)."""

    @abstractmethod
    def _cancel(self) -> None:
        """Ask the cluster to end the job."""

    @abstractmethod
    def describe(self) -> str:
        """`slurm job 12`, `k8s job conveyor-1a2b`: in status messages and logs."""

    def poll(self) -> int | None:
        if self.final is not None:
            return self.final.exit_status
        current = self.view()
        if current is not None and not current.ended:
            return None
        self.final = self.ended(current)
        return None if self.final is None else self.final.exit_status

    def cancel(self) -> None:
        """The glue ends the job of a task aborted or dequeued: its end is no failure."""
        self.record.cancelled = True
        self.record.save_quietly()
        self._cancel()

    def stop(self, grace: float) -> None:
        self.cancel()

    def kill(self) -> None:
        self._cancel()


def adopt_jobs(kind: str, worker: str, active: Mapping[str, tuple[str, str]],
               job_of: Callable[[JobRecord], ClusterJob]) -> list[Leftover]:
    """What a glue of `worker` left: its records, completed by `active` (task id -> (job id, queue id) of the jobs
    the cluster still runs with the glue's marks: those it created and never recorded). A record without a job comes
    back without a handle and an empty reason: the glue creates that task's job again if it is still pending for it."""
    unrecorded = dict(active)
    found: list[Leftover] = []
    for record in JobRecord.of(kind, worker):
        marked = unrecorded.pop(record.task_id, None)
        if not record.job_id and marked is not None:
            record.job_id = marked[0]
            record.save_quietly()
        if record.job_id:
            found.append(Leftover(record.task_id, record.queue_id, None, job_of(record)))
        else:
            found.append(Leftover(record.task_id, record.queue_id, None, None, ""))
    for task_id, (job_id, queue_id) in unrecorded.items():
        record = JobRecord(task_id, queue_id, worker, job_id, kind=kind)
        record.save_quietly()
        found.append(Leftover(task_id, queue_id, None, job_of(record)))
    return found


class ClusterRuntime(Protocol):
    """A runtime whose runs are cluster jobs (`runtimes/base.Runtime`, plus what the glue needs)."""

    kind: str  # "slurm", "k8s": names the records' folder, the worker id's suffix, the config section
    worker: str
    queue_names: dict[str, str]

    def check(self) -> str:
        """The cluster as the glue's banner shows it. Raises UserError when it cannot be reached at all."""
        ...

    def describe(self) -> str: ...

    def standby_pids(self) -> frozenset[int]: ...

    def drain(self) -> None: ...

    def template_name(self, queue_id: str) -> str:
        """What the queue's jobs are made from, for the task's log."""
        ...

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> ClusterJob:
        """Create the job. Raises TaskFailure (the task's fault: the template, a refusal) or ClusterError."""
        ...

    def adopt(self, worker: str) -> list[Leftover]:
        """The jobs a previous glue of this worker id created; a record without a job comes back without a handle
        (the glue creates that task's job again if it is still pending for it)."""
        ...
