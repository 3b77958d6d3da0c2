"""A glue: a daemon whose runtime is a cluster (Slurm, Kubernetes) that runs each task as one job.

It pulls as every daemon does (long-poll, queue priority, working hours), and hands each task to the cluster as
one job made from its queue's template. Between the pull and the job's start the task stays `queued`, in the glue's
pending queue, with the cluster's word on it as its status message (`slurm job 12 pending: Resources`); the job's
`conveyor execute --require-queue` takes it from there, and refuses it if it was aborted or taken out of the pending
queue meanwhile. The glue cancels such a job itself as soon as it sees it, fails the task of a job that can never
start (an image that cannot be pulled), and ends every task whose job the cluster ended before its executor could
(a time limit, a cancel, an eviction, memory) with the cluster's reason.

Jobs outlive the glue: a glue stopped, or killed and restarted with the same worker id, adopts its jobs (its records
under the agent folder and the marks the cluster keeps on them), and creates nothing twice.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from typing import Any

from conveyor.agent.daemon import Daemon, DaemonError, DaemonOptions, Running
from conveyor.agent.identity import Slot
from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.errors import ConveyorError, TaskFailure
from conveyor.protocol.failure import ATTEMPTS_FIELD, FailureClass, of_image, of_job_end
from conveyor.protocol.failure import FIELD as FAILURE_CLASS
from conveyor.protocol.status import STOPPING, TaskStatus
from conveyor.protocol.tags import QUEUE_LIMIT_NOTE
from conveyor.runtimes.base import TaskRun
from conveyor.runtimes.cluster import ClusterError, ClusterJob, ClusterRuntime, JobRecord

log = logging.getLogger("conveyor.agent")

DONE = frozenset({TaskStatus.completed.value, TaskStatus.published.value})
ABORT_MARGIN_SEC = 10.0  # beyond agent.kill_grace_sec, how long an aborted task's job may still run


class ClusterGlue(Daemon):
    """What every glue does; a subclass gives the runtime (`self.cluster`) and binds its queues' templates."""

    TITLE = "cluster"  # in log lines: "the Slurm glue"
    JOB_PROPERTY = "job"  # the user property naming the task's last job
    UNIT_PROPERTY = ""  # the user property naming what runs it, where the cluster names it apart (a pod)

    def __init__(self, client: ApiCaller, cfg: Config, opts: DaemonOptions, cluster: ClusterRuntime,
                 max_jobs: int, queue_limits: dict[str, int]):
        opts.services_mode = max_jobs  # several jobs at once; 0: no limit
        super().__init__(client, cfg, opts, runtime=cluster)
        self.cluster = cluster
        self.kind = cluster.kind
        self.queue_limits = queue_limits  # queue name or id -> max jobs
        self.pending_queue = ""
        self.limits: dict[str, int] = {}  # queue id -> max jobs
        self.messages: dict[str, str] = {}  # task id -> the status message last written
        self.resubmit: list[tuple[str, str]] = []  # (task, queue) a killed glue recorded but never submitted
        self.notes: dict[str, str] = {}  # queue id -> the limit note last written
        self.units: dict[str, str] = {}  # task id -> the unit (pod) last written on it
        self.aborted: dict[str, float] = {}  # task id -> when its task was seen ended while its job still ran

    def _setting(self, key: str) -> Any:
        return self.cfg.get(f"agent.{self.kind}.{key}")

    # --- start ----------------------------------------------------------------------------------------------------
    def _worker_id(self, slot: Slot) -> str:
        explicit = self.cfg.get("agent.worker_id", None)
        if explicit:
            return str(explicit)
        # not the slot's index, as a daemon's: a glue restarted after a daemon took its slot must find its jobs
        name = self.cfg.get("agent.worker_name", None) or socket.gethostname()
        return f"{name}:{self.kind}"

    def _bind(self, queue_ids: list[str]) -> None:
        """Give the runtime each queue's template; raise DaemonError for a queue without one."""
        raise NotImplementedError

    def _resolve_queues(self) -> list[str]:
        info = self.cluster.check()
        queue_ids = super()._resolve_queues()
        self._bind(queue_ids)
        for queue_id in queue_ids:
            limit = self.queue_limits.get(self.queue_names[queue_id]) or self.queue_limits.get(queue_id)
            if limit:
                self.limits[queue_id] = limit
        self.pending_queue = self._pending_queue()
        log.info("%s: %s; pending tasks wait in queue %s", self.TITLE, info, self._setting("pending_queue"))
        return queue_ids

    def _pending_queue(self) -> str:
        name = str(self._setting("pending_queue"))
        found = [q for q in self.client.call("queues.get_all", {"name": f"^{name}$", "only_fields": ["id", "name"]})
                 ["queues"] if q.get("name") == name]
        if found:
            return str(found[0]["id"])
        return str(self.client.call("queues.create", {"name": name, "system_tags": [f"{self.kind}-glue"]})["id"])

    def _take_over_leftovers(self) -> None:
        self.cluster.worker = self.worker
        try:
            leftovers = self.cluster.adopt(self.worker)
        except ClusterError as exc:
            raise DaemonError(str(exc), hint=f"Check that the {self.TITLE} cluster answers from here") from None
        for left in leftovers:
            if left.handle is None:
                self.resubmit.append((left.task_id, left.queue_id))
                continue
            with self._lock:
                self.running[left.task_id] = Running(left.task_id, left.queue_id, left.handle)
            log.info("adopted task %s (%s), created by a previous glue with this worker id", left.task_id,
                     left.handle.describe())

    # --- pulling and submitting -----------------------------------------------------------------------------------
    def _open_queues(self, order: list[str]) -> list[str]:
        if not self.limits:
            return order
        counts = Counter(run.queue_id for run in list(self.running.values()))
        return [q for q in order if q not in self.limits or counts[q] < self.limits[q]]

    def _launch(self, task_id: str, queue_id: str) -> None:
        queue_name = self.queue_names.get(queue_id, queue_id)
        # first a record without a job: a glue killed from here on finds the task in the pending queue at restart
        JobRecord(task_id, queue_id, self.worker, kind=self.kind).save_quietly()
        try:  # the task waits in the pending queue until its job's executor takes it out
            self.client.call("queues.add_task", {"queue": self.pending_queue, "task": task_id})
        except ConveyorError as exc:
            log.warning("task %s: could not move it to the pending queue (%s); giving it back", task_id, exc)
            self._back_to_queue(task_id, queue_id)
            return
        self._task_log(task_id, f"task {task_id} pulled from {queue_id} ({queue_name}) by the {self.TITLE} glue "
                                f"{self.worker}\n")
        self._submit(task_id, queue_id)

    def _submit(self, task_id: str, queue_id: str) -> None:
        earlier = self.running.get(task_id)
        if earlier is not None and isinstance(earlier.handle, ClusterJob):  # re-enqueued before its old job ended
            log.info("task %s is back before %s ended: cancelling that job", task_id, earlier.handle.describe())
            earlier.handle.cancel()
            with self._lock:
                self.running.pop(task_id, None)
        attempts = self._attempts_at_submission(task_id)
        try:
            handle = self.cluster.launch(TaskRun(task_id, queue_id, self.worker), {})
        except TaskFailure as exc:  # the template, the cluster's refusal: this task's fault, not the glue's
            self._fail(task_id, str(exc), exc.failure_class)
            return
        except ConveyorError as exc:  # the cluster's or the server's: the task goes back to its queue
            log.error("task %s: %s; giving it back to its queue", task_id, exc)
            self._back_to_queue(task_id, queue_id)
            return
        except Exception:  # a bug of ours must not strand the task in the pending queue, nor end the glue
            log.exception("task %s: giving it back to its queue", task_id)
            self._back_to_queue(task_id, queue_id)
            return
        if attempts is not None and isinstance(handle, ClusterJob):
            handle.record.attempts = attempts
            handle.record.save_quietly()
        with self._lock:
            self.running[task_id] = Running(task_id, queue_id, handle)
        log.info("task %s from %s: %s", task_id, self.queue_names.get(queue_id, queue_id), handle.describe())
        made_from = self.cluster.template_name(queue_id)
        self._task_log(task_id, f"conveyor: submitted as {handle.describe()} ({made_from})\n")
        self._say(task_id, f"{handle.describe()} submitted")
        self._property(task_id, self.JOB_PROPERTY, handle.job_id)
        self._report()

    def _attempts_at_submission(self, task_id: str) -> int | None:
        """The number of the task's last failed run before its job (None: the server did not say)."""
        try:
            found = self.client.call("tasks.get_all", {"id": [task_id], "only_fields": [ATTEMPTS_FIELD],
                                                       "search_hidden": True})["tasks"]
        except ConveyorError as exc:
            log.warning("task %s: could not read its attempts: %s", task_id, exc)
            return None
        return self._last_attempt(found[0]) if found else None

    def _property(self, task_id: str, name: str, value: str) -> None:
        """On the task, as the reference's Kubernetes glue records its pod: a user property."""
        self._tolerant_call("tasks.edit_hyper_params", {"task": task_id, "force": True, "hyperparams": [
            {"section": "properties", "name": name, "value": value,
             "description": f"set by the {self.TITLE} glue {self.worker}"}]})

    def _back_to_queue(self, task_id: str, queue_id: str) -> None:
        JobRecord(task_id, queue_id, self.worker, kind=self.kind).remove()
        self._tolerant_call("queues.remove_task", {"queue": self.pending_queue, "task": task_id})
        if queue_id:
            self._give_back(task_id, queue_id)

    def _fail(self, task_id: str, reason: str, failure_class: str = FailureClass.infrastructure.value) -> None:
        """Fail the task for the cluster's reason: an infrastructure failure (the job could not be placed, its node
        failed, it was evicted or killed) unless the submission itself was the task's fault."""
        log.error("task %s: %s", task_id, reason)
        self._task_log(task_id, f"conveyor: {reason}\n", "error")
        self._tolerant_call("tasks.failed", {"task": task_id, "force": True, "status_reason": reason,
                                             FAILURE_CLASS: failure_class})

    def _say(self, task_id: str, message: str) -> None:
        """The task's status message, while it waits in the cluster; written when it changes."""
        if self.messages.get(task_id) != message:
            self.messages[task_id] = message
            self._tolerant_call("tasks.update", {"task": task_id, "status_message": message})

    # --- watching the jobs ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        # The jobs are watched from their own thread: a server or cluster that is slow to answer must not keep the
        # loop from pulling, or from seeing a stop signal.
        threading.Thread(target=self._watch_forever, name=f"{self.kind}-watch", daemon=True).start()
        super()._loop()

    def _reap_children(self) -> None:
        """The watcher thread reaps (see `_watch_forever`)."""

    def _watch_forever(self) -> None:
        interval = float(self._setting("poll_interval_sec"))
        trouble = ""
        while not self.draining.is_set():
            try:
                self._look_at_jobs()
                super()._reap_children()
                self._tidy()
                self._note_limits()
                trouble = ""
            except ConveyorError as exc:  # the cluster's controller restarting, the server away: look again soon
                if str(exc) != trouble:
                    log.warning("watching the %s jobs: %s", self.TITLE, exc)
                trouble = str(exc)
            except Exception:  # a bug of ours must not end the watching: logged, and the next look goes on
                log.exception("watching the %s jobs", self.TITLE)
            self.draining.wait(interval)

    def _look_at_jobs(self) -> None:
        """Resubmit what a killed glue left unsubmitted, cancel the jobs of tasks that left the pending queue
        (aborted, dequeued, deleted) before their job started, fail the tasks of jobs that can never start, and tell
        the others' state on the task."""
        runs = list(self.running.values())  # before the pending queue is read: each of them was in it by then
        waiting = self._waiting_tasks()
        resubmit, self.resubmit = self.resubmit, []
        for task_id, queue_id in resubmit:
            if task_id not in waiting:
                JobRecord(task_id, queue_id, self.worker, kind=self.kind).remove()
            elif queue_id in self.queue_names and queue_id in self.policy.queue_ids:
                log.info("task %s: submitting it, as the previous glue did not get to", task_id)
                self._submit(task_id, queue_id)
            else:  # pulled from a queue this glue no longer serves
                log.info("task %s: back to its queue %s, which this glue does not serve", task_id, queue_id)
                self._back_to_queue(task_id, queue_id)
        views = {}
        for run in runs:
            job = run.handle
            if not isinstance(job, ClusterJob) or job.final is not None or job.record.cancelled:
                continue
            view = views[run.task_id] = job.view()
            if view is not None and view.unit and self.UNIT_PROPERTY and self.units.get(run.task_id) != view.unit:
                self.units[run.task_id] = view.unit
                self._property(run.task_id, self.UNIT_PROPERTY, view.unit)
            if view is None or view.ended or run.task_id not in waiting:
                self.messages.pop(run.task_id, None)
                continue
            if view.fatal and view.phase == "pending":
                job.cancel()
                self._fail(run.task_id, f"{job.describe()}: {view.fatal}", of_image(view.fatal).value)
            elif view.phase == "pending":
                self._say(run.task_id, f"{job.describe()} pending: {view.reason}")
            else:
                self._say(run.task_id, f"{job.describe()} {view.reason} on {view.where}: starting the task")
        self._cancel_abandoned([run for run in runs if (view := views.get(run.task_id)) is not None
                                and view.phase == "pending" and run.task_id not in waiting])
        self._end_aborted([run for run in runs if (view := views.get(run.task_id)) is not None
                           and view.phase == "running" and run.task_id not in waiting])

    def _end_aborted(self, started: list[Running]) -> None:
        """A running job whose task was aborted: its executor stops the task within agent.kill_grace_sec; if the job
        is still there some seconds later (an executor that hangs, a pod that does not end), the glue ends it."""
        if not started:
            self.aborted.clear()
            return
        found = {t["id"]: t for t in self.client.call("tasks.get_all", {
            "id": [run.task_id for run in started], "only_fields": ["id", "status", "status_message"],
            "search_hidden": True})["tasks"]}
        grace = float(self.cfg.get("agent.kill_grace_sec")) + ABORT_MARGIN_SEC
        now = time.monotonic()
        seen = set()
        for run in started:
            task = found.get(run.task_id) or {}
            status, message = task.get("status"), task.get("status_message") or ""
            if not (status == TaskStatus.stopped.value or (status == TaskStatus.in_progress.value
                                                           and STOPPING in message)):
                continue
            seen.add(run.task_id)
            first = self.aborted.setdefault(run.task_id, now)
            if now - first >= grace and isinstance(run.handle, ClusterJob) and not run.handle.record.cancelled:
                log.warning("task %s was aborted %.0f s ago and %s still runs: ending it", run.task_id, now - first,
                            run.handle.describe())
                run.handle.cancel()
        self.aborted = {t: v for t, v in self.aborted.items() if t in seen}

    def _tidy(self) -> None:
        """What a cluster keeps of ended jobs, cleaned up (Kubernetes: finished Jobs after keep_finished_sec)."""

    def _note_limits(self) -> None:
        """A queue at its job limit says so in `queue list` (its metadata `conveyor_glue_limit`)."""
        if not self.limits:
            return
        counts = Counter(run.queue_id for run in list(self.running.values()))
        for queue_id, limit in self.limits.items():
            note = (f"{self.TITLE} glue {self.worker}: {counts[queue_id]} of {limit} jobs running, not pulling"
                    if counts[queue_id] >= limit else "")
            if self.notes.get(queue_id, "") == note:
                continue
            self.notes[queue_id] = note
            try:
                queue = self.client.call("queues.get_by_id", {"queue": queue_id})["queue"]
                metadata = dict(queue.get("metadata") or {})
                if note:
                    metadata[QUEUE_LIMIT_NOTE] = {"key": QUEUE_LIMIT_NOTE, "type": "str", "value": note}
                else:
                    metadata.pop(QUEUE_LIMIT_NOTE, None)
                self.client.call("queues.update", {"queue": queue_id, "metadata": metadata})
            except ConveyorError as exc:
                log.warning("queue %s: could not note its limit: %s", queue_id, exc)

    def _waiting_tasks(self) -> dict[str, str]:
        """The tasks in the pending queue that are still queued: task id -> status."""
        queue = self.client.call("queues.get_by_id", {"queue": self.pending_queue})["queue"]
        return {entry["task"]: TaskStatus.queued.value for entry in queue.get("entries") or []}

    def _cancel_abandoned(self, candidates: list[Running]) -> None:
        """Jobs still pending whose task left the pending queue (aborted, dequeued, deleted): cancel them, say why.
        A job already running needs nothing: its executor refuses a task no longer pending for it, or runs it."""
        candidates = [run for run in candidates if isinstance(run.handle, ClusterJob)
                      and not run.handle.record.cancelled]
        if not candidates:
            return
        found = {t["id"]: t for t in self.client.call("tasks.get_all", {
            "id": [run.task_id for run in candidates], "only_fields": ["id", "status"],
            "search_hidden": True})["tasks"]}
        for run in candidates:
            job = run.handle
            assert isinstance(job, ClusterJob)
            status = (found.get(run.task_id) or {}).get("status")
            if status == TaskStatus.in_progress.value:
                continue  # its executor took it (a job pending again is the cluster's replacement: see its end)
            job.cancel()
            why = "deleted" if status is None else f"{status}"
            log.info("task %s is %s before its %s started: cancelled the job", run.task_id, why, job.describe())
            if status is not None:
                self._task_log(run.task_id, f"conveyor: the task is {why} before {job.describe()} started: "
                                            "the job was cancelled\n")

    def _after_exit(self, run: Running, code: int) -> None:
        """A job ended: the executor reported the task's status, unless the cluster ended the job first (or it
        never started the executor): then the task fails with the cluster's reason."""
        job = run.handle
        assert isinstance(job, ClusterJob)
        final = job.final
        self.messages.pop(run.task_id, None)
        self.units.pop(run.task_id, None)
        try:
            found = self.client.call("tasks.get_all", {"id": [run.task_id], "only_fields": ["status", ATTEMPTS_FIELD],
                                                       "search_hidden": True})["tasks"]
        except ConveyorError as exc:  # the next look tries again (the job's end is kept)
            log.warning("task %s: could not read its status after %s ended: %s", run.task_id, job.describe(), exc)
            with self._lock:
                self.running.setdefault(run.task_id, run)
            return
        status = found[0].get("status") if found else None
        reason = final.reason if final is not None else f"{job.describe()} ended"
        log.info("task %s: %s ended (%s)", run.task_id, job.describe(), reason)
        submitted_after = job.record.attempts
        if found and submitted_after is not None and self._last_attempt(found[0]) != submitted_after:
            # the job's executor failed the run and the server already recorded it (and queued a retry): that
            # retry, queued or started elsewhere, is not this job's to fail
            log.info("task %s: the run of %s failed and was recorded; its retry is %s", run.task_id,
                     job.describe(), status)
        elif status is not None and not job.record.cancelled:
            killed = final is not None and final.killed
            if status in (TaskStatus.queued.value, TaskStatus.in_progress.value) or (killed and status not in DONE):
                # the task's own limits (its time, its memory) are its failure; the cluster's failures are not
                failure_class = of_job_end(final.reason) if final is not None else FailureClass.infrastructure
                if status == TaskStatus.queued.value:
                    reason += " before the task started"
                self._fail(run.task_id, reason, failure_class.value)
        self._job_ended(job, status)
        job.record.remove()
        self._report()

    def _job_ended(self, job: ClusterJob, status: str | None) -> None:
        """What the cluster keeps of an ended job, once its task has its final status."""

    # --- stopping -------------------------------------------------------------------------------------------------
    def _stop_children(self) -> None:
        """Jobs are the cluster's: stopping the glue leaves them running (abort a task to end its job)."""

    def _wind_down(self) -> None:
        with self._lock:
            left = len(self.running)
            self.running.clear()
        if left:
            log.info("%d %s job(s) go on; a glue started again with worker id %s adopts them", left, self.TITLE,
                     self.worker)
        super()._wind_down()
