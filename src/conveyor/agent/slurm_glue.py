"""The Slurm glue (`conveyor slurm`): a daemon whose runtime is a Slurm cluster.

It pulls as every daemon does (long-poll, queue priority, working hours), and hands each task to Slurm as one batch
job made from its queue's template. Between the pull and the job's start the task stays `queued`, in the glue's
pending queue, with Slurm's word on it as its status message (`slurm job 12 pending: Resources`); the job's
`conveyor execute --require-queue` takes it from there, and refuses it if it was aborted or taken out of the pending
queue meanwhile. The glue cancels such a job itself as soon as it sees it, and ends every task whose job Slurm ended
before its executor could (a time limit, `scancel`, a node failure, memory) with Slurm's state as the reason.

Jobs outlive the glue: a glue stopped, or killed and restarted with the same worker id, adopts its jobs (records
under the agent folder and the jobs' comments in Slurm), and submits nothing twice.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.agent.daemon import Daemon, DaemonError, DaemonOptions, Running
from conveyor.agent.identity import Slot
from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.errors import ConveyorError, TaskFailure
from conveyor.protocol.status import TaskStatus
from conveyor.runtimes.base import TaskRun
from conveyor.runtimes.run_records import agent_dir
from conveyor.runtimes.slurm import KILLED_STATES, JobRecord, SlurmError, SlurmJob, SlurmRuntime
from conveyor.runtimes.slurm_script import singularity_image

log = logging.getLogger("conveyor.agent")

PENDING_QUEUE_TAG = "slurm-glue"  # system tag of the pending queue the glue creates
JOB_ID_PROPERTY = "slurm-job-id"  # the user property holding the task's last Slurm job
DONE = frozenset({TaskStatus.completed.value, TaskStatus.published.value})


@dataclass
class GlueOptions:
    templates: dict[str, Path] = field(default_factory=dict)  # queue name -> template file, in priority order
    max_jobs: int = 0  # 0: no limit
    queue_limits: dict[str, int] = field(default_factory=dict)  # queue name -> max jobs
    singularity: bool = False


class SlurmGlue(Daemon):
    def __init__(self, client: ApiCaller, cfg: Config, opts: DaemonOptions, glue: GlueOptions):
        opts.services_mode = glue.max_jobs  # several jobs at once; 0: no limit
        work_dir = Path(cfg.get("agent.slurm.work_dir") or agent_dir() / "slurm").expanduser()
        default_image = str(cfg.get("agent.default_docker.image") or "")

        def image_of(task: dict[str, Any]) -> str:
            image = (task.get("container") or {}).get("image") or default_image
            if not image:
                raise TaskFailure("--singularity-mode: the task names no image and agent.default_docker.image is "
                                  "empty")
            return singularity_image(image)

        self.slurm = SlurmRuntime(
            str(cfg.path) if cfg.path else None,
            fetch_task=lambda task_id: client.call("tasks.get_by_id", {"task": task_id})["task"],
            work_dir=work_dir, singularity_image=image_of if glue.singularity else None,
            pre_setup=list(cfg.get("agent.slurm.pre_setup") or []),
            post_setup=list(cfg.get("agent.slurm.post_setup") or []),
            refresh_sec=float(cfg.get("agent.slurm.poll_interval_sec")))
        super().__init__(client, cfg, opts, runtime=self.slurm)
        self.glue = glue
        self.pending_queue = ""
        self.limits: dict[str, int] = {}  # queue id -> max jobs
        self.messages: dict[str, str] = {}  # task id -> the status message last written
        self.resubmit: list[tuple[str, str]] = []  # (task, queue) a killed glue recorded but never submitted

    # --- start ----------------------------------------------------------------------------------------------------
    def _worker_id(self, slot: Slot) -> str:
        explicit = self.cfg.get("agent.worker_id", None)
        if explicit:
            return str(explicit)
        name = self.cfg.get("agent.worker_name", None) or socket.gethostname()
        return f"{name}:slurm" + (f"{slot.index}" if slot.index else "")

    def _resolve_queues(self) -> list[str]:
        info = self.slurm.cli.check()
        queue_ids = super()._resolve_queues()
        templates: dict[str, tuple[str, str]] = {}
        by_name = {name.lower(): path for name, path in self.glue.templates.items()}
        for queue_id in queue_ids:
            name = self.queue_names[queue_id]
            path = by_name.get(name.lower()) or self.glue.templates.get(queue_id)
            if path is None:
                raise DaemonError(f'No batch template for queue "{name}"',
                                  hint="Give one --template-files entry per --queue, in the same order, or set "
                                       "agent.slurm.templates")
            try:
                templates[queue_id] = (path.name, path.read_text())
            except OSError as exc:
                raise DaemonError(f"Could not read the template {path}: {exc.strerror}") from None
            limit = self.glue.queue_limits.get(name) or self.glue.queue_limits.get(queue_id)
            if limit:
                self.limits[queue_id] = limit
        self.slurm.bind(templates, self.queue_names)
        self.pending_queue = self._pending_queue()
        log.info("Slurm: %s; pending tasks wait in queue %s", info, self.cfg.get("agent.slurm.pending_queue"))
        return queue_ids

    def _pending_queue(self) -> str:
        name = str(self.cfg.get("agent.slurm.pending_queue"))
        found = [q for q in self.client.call("queues.get_all", {"name": f"^{name}$", "only_fields": ["id", "name"]})
                 ["queues"] if q.get("name") == name]
        if found:
            return str(found[0]["id"])
        return str(self.client.call("queues.create", {"name": name, "system_tags": [PENDING_QUEUE_TAG]})["id"])

    def _take_over_leftovers(self) -> None:
        self.slurm.worker = self.worker
        try:
            leftovers = self.slurm.adopt(self.worker)
        except SlurmError as exc:
            raise DaemonError(str(exc), hint="Check that slurmctld runs and `squeue` works here") from None
        for left in leftovers:
            if left.handle is None:
                self.resubmit.append((left.task_id, left.queue_id))
                continue
            with self._lock:
                self.running[left.task_id] = Running(left.task_id, left.queue_id, left.handle)
            log.info("adopted task %s (%s), submitted by a previous glue with this worker id", left.task_id,
                     left.handle.describe())

    # --- pulling and submitting -----------------------------------------------------------------------------------
    def _open_queues(self, order: list[str]) -> list[str]:
        if not self.limits:
            return order
        counts = Counter(run.queue_id for run in list(self.running.values()))
        return [q for q in order if q not in self.limits or counts[q] < self.limits[q]]

    def _launch(self, task_id: str, queue_id: str) -> None:
        queue_name = self.queue_names.get(queue_id, queue_id)
        try:  # the task waits in the pending queue until its job's executor takes it out
            self.client.call("queues.add_task", {"queue": self.pending_queue, "task": task_id})
        except ConveyorError as exc:
            log.warning("task %s: could not move it to the pending queue (%s); giving it back", task_id, exc)
            self._give_back(task_id, queue_id)
            return
        self._task_log(task_id, f"task {task_id} pulled from {queue_id} ({queue_name}) by the Slurm glue "
                                f"{self.worker}\n")
        self._submit(task_id, queue_id)

    def _submit(self, task_id: str, queue_id: str) -> None:
        try:
            handle = self.slurm.launch(TaskRun(task_id, queue_id, self.worker), {})
        except TaskFailure as exc:  # the template, sbatch's refusal: this task's fault, not the glue's
            self._fail(task_id, str(exc))
            return
        except SlurmError as exc:  # the cluster's: the task goes back to its queue
            log.error("task %s: %s; giving it back to its queue", task_id, exc)
            self._tolerant_call("queues.remove_task", {"queue": self.pending_queue, "task": task_id})
            self._give_back(task_id, queue_id)
            return
        with self._lock:
            self.running[task_id] = Running(task_id, queue_id, handle)
        log.info("task %s from %s: %s", task_id, self.queue_names.get(queue_id, queue_id), handle.describe())
        self._task_log(task_id, f"conveyor: submitted as {handle.describe()} ({self.slurm.templates[queue_id][0]})\n")
        self._say(task_id, f"{handle.describe()} submitted")
        # on the task, as the reference's Kubernetes glue records its pod: a user property
        self._tolerant_call("tasks.edit_hyper_params", {"task": task_id, "force": True, "hyperparams": [
            {"section": "properties", "name": JOB_ID_PROPERTY, "value": handle.job_id,
             "description": f"set by the Slurm glue {self.worker}"}]})
        self._report()

    def _fail(self, task_id: str, reason: str) -> None:
        log.error("task %s: %s", task_id, reason)
        self._task_log(task_id, f"conveyor: {reason}\n", "error")
        self._tolerant_call("tasks.failed", {"task": task_id, "force": True, "status_reason": reason})

    def _say(self, task_id: str, message: str) -> None:
        """The task's status message, while it waits in Slurm; written when it changes."""
        if self.messages.get(task_id) != message:
            self.messages[task_id] = message
            self._tolerant_call("tasks.update", {"task": task_id, "status_message": message})

    # --- watching the jobs ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        # The jobs are watched from their own thread: a server or slurmctld that is slow to answer must not keep the
        # loop from pulling, or from seeing a stop signal.
        threading.Thread(target=self._watch_forever, name="slurm-watch", daemon=True).start()
        super()._loop()

    def _reap_children(self) -> None:
        """The watcher thread reaps (see `_watch_forever`)."""

    def _watch_forever(self) -> None:
        interval = float(self.cfg.get("agent.slurm.poll_interval_sec"))
        trouble = ""
        while not self.draining.is_set():
            try:
                self._look_at_jobs()
                super()._reap_children()
                trouble = ""
            except ConveyorError as exc:  # slurmctld restarting, the server away: look again soon
                if str(exc) != trouble:
                    log.warning("watching the Slurm jobs: %s", exc)
                trouble = str(exc)
            self.draining.wait(interval)

    def _look_at_jobs(self) -> None:
        """Resubmit what a killed glue left unsubmitted, cancel the jobs of tasks that left the pending queue
        (aborted, dequeued, deleted) before their job started, and tell the others' Slurm state on the task."""
        runs = list(self.running.values())  # before the pending queue is read: each of them was in it by then
        waiting = self._waiting_tasks()
        for task_id, queue_id in self.resubmit:
            if task_id in waiting:
                log.info("task %s: submitting it, as the previous glue did not get to", task_id)
                self._submit(task_id, queue_id)
            else:
                JobRecord(task_id, queue_id, self.worker).remove()
        self.resubmit = []
        for run in runs:
            job = run.handle
            if not isinstance(job, SlurmJob) or job.final is not None or job.record.cancelled:
                continue
            state = job.state()
            if state is None or state.ended or run.task_id not in waiting:
                self.messages.pop(run.task_id, None)
                continue
            if state.state == "PENDING":
                self._say(run.task_id, f"{job.describe()} pending: {state.reason}")
            else:
                self._say(run.task_id, f"{job.describe()} {state.state.lower()} on {state.nodes}: starting the task")
        self._cancel_abandoned(runs, waiting)

    def _waiting_tasks(self) -> dict[str, str]:
        """The tasks in the pending queue that are still queued: task id -> status."""
        queue = self.client.call("queues.get_by_id", {"queue": self.pending_queue})["queue"]
        return {entry["task"]: TaskStatus.queued.value for entry in queue.get("entries") or []}

    def _cancel_abandoned(self, runs: list[Running], waiting: dict[str, str]) -> None:
        """A job still pending whose task left the pending queue (aborted, dequeued, deleted): cancel it, say why.
        A job already running needs nothing: its executor refuses a task no longer pending for it, or runs it."""
        candidates = []
        for run in runs:
            job = run.handle
            if isinstance(job, SlurmJob) and job.final is None and not job.record.cancelled \
                    and run.task_id not in waiting and (state := job.state()) is not None and state.state == "PENDING":
                candidates.append(run)
        if not candidates:
            return
        found = {t["id"]: t for t in self.client.call("tasks.get_all", {
            "id": [run.task_id for run in candidates], "only_fields": ["id", "status"],
            "search_hidden": True})["tasks"]}
        for run in candidates:
            job = run.handle
            assert isinstance(job, SlurmJob)
            status = (found.get(run.task_id) or {}).get("status")
            job.cancel()
            why = "deleted" if status is None else f"{status}"
            log.info("task %s is %s before its %s started: cancelled the job", run.task_id, why, job.describe())
            if status is not None:
                self._task_log(run.task_id, f"conveyor: the task is {why} before {job.describe()} started: "
                                            "the job was cancelled\n")

    def _after_exit(self, run: Running, code: int) -> None:
        """A job ended: the executor reported the task's status, unless Slurm ended the job first (or it never
        started the executor): then the task fails with Slurm's state and exit code."""
        job = run.handle
        assert isinstance(job, SlurmJob)
        final = job.final
        self.messages.pop(run.task_id, None)
        try:
            found = self.client.call("tasks.get_all", {"id": [run.task_id], "only_fields": ["status"],
                                                       "search_hidden": True})["tasks"]
        except ConveyorError as exc:
            log.warning("task %s: could not read its status after %s ended: %s", run.task_id, job.describe(), exc)
            return  # the record stays: the next glue looks again
        status = found[0].get("status") if found else None
        reason = final.describe_end() if final is not None else f"{job.describe()} ended"
        log.info("task %s: %s ended (%s)", run.task_id, job.describe(), reason)
        if status is not None and not job.record.cancelled:
            killed = final is not None and final.state in KILLED_STATES
            if status in (TaskStatus.queued.value, TaskStatus.in_progress.value) or (killed and status not in DONE):
                if status == TaskStatus.queued.value:
                    reason += " before the task started (see the job's output file)"
                self._fail(run.task_id, reason)
        job.record.remove()
        self._report()

    # --- stopping -------------------------------------------------------------------------------------------------
    def _stop_children(self) -> None:
        """Jobs are the cluster's: stopping the glue leaves them running (abort a task to end its job)."""

    def _wind_down(self) -> None:
        with self._lock:
            left = len(self.running)
            self.running.clear()
        if left:
            log.info("%d Slurm job(s) go on; a glue started again with worker id %s adopts them", left, self.worker)
        super()._wind_down()
