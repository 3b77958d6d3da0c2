"""What a daemon needs from a place that runs tasks: a local process, a container, later a Slurm job or a pod.

The daemon hands a runtime one `TaskRun` at a time and watches the `RunHandle` it gets back; at start-up it asks the
runtime what a previous daemon with the same worker id left (`adopt`). It never asks which kind of runtime it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TaskRun:
    """One task handed to a runtime: which, from which queue, and the worker ids that report it."""

    task_id: str
    queue_id: str = ""
    worker: str = ""  # the daemon's worker id: what lets a restarted daemon find the run again
    sub_worker: str | None = None  # services mode: the task's own worker id


class RunHandle(Protocol):
    """One started run of `conveyor execute`; the executor inside reports the task's status itself."""

    def poll(self) -> int | None:
        """The executor's exit code once it has ended, else None. Never blocks."""
        ...

    def stop(self, grace: float) -> None:
        """Ask the executor to stop its task (it marks it stopped); forced after `grace` seconds where the runtime
        enforces it. Returns at once: a signal handler calls it."""
        ...

    def kill(self) -> None:
        """End the run now (the daemon's stop deadline has passed)."""
        ...

    def describe(self) -> str:
        """Where it runs, for the daemon's log: "pid 123", "in container c, image i"."""
        ...

    @property
    def pid(self) -> int | None:
        """The local process the daemon must not end as an orphan while the run goes on; None if there is none."""
        ...

    @property
    def start_failure(self) -> str | None:
        """Why the run never got to start its executor (the task's status reason), once it has ended; else None."""
        ...


@dataclass
class Leftover:
    """A run a previous daemon with this worker id started. With a handle it still runs and is adopted; without, it
    is gone and its task, if still in progress, fails with `reason`."""

    task_id: str
    queue_id: str = ""
    sub_worker: str | None = None
    handle: RunHandle | None = None
    reason: str = ""


class Runtime(Protocol):
    def describe(self) -> str:
        """How tasks run, for the daemon's banner ("tasks in docker containers"); "" for plain local processes."""
        ...

    def adopt(self, worker: str) -> list[Leftover]:
        """Attach to `worker` (the daemon's id) and return what a previous daemon of that id left. Called once,
        before any launch. Raises UserError when the runtime cannot be used at all."""
        ...

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> RunHandle:
        """Start the executor of `run` with `env` added to its environment. Raises TaskFailure (the task's status
        reason) when it cannot be started."""
        ...

    def standby_pids(self) -> frozenset[int]:
        """Local processes kept ready for the next run (a standby executor): no task's leftovers, left alone when the
        daemon ends what a run left behind."""
        ...

    def drain(self) -> None:
        """No task will be launched any more (the daemon stops taking work): what is kept ready for one ends, and
        nothing is made ready again."""
        ...
