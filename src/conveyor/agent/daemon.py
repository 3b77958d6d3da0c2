"""The agent daemon: register, pick a queue, pull (long-poll where the server offers it), launch, drain.

It decides only *what* runs and *where*; each task runs in its own `conveyor execute` process, which reports the
task's status itself. The daemon reports the worker (and, in services mode, one sub-worker per task).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.agent.gpu_allocation import EIGHTHS, GpuRequest, parse_gpu_ids
from conveyor.agent.gpu_broker import GpuBroker
from conveyor.agent.gpus import GpuInventory
from conveyor.agent.identity import Slot, describe, running_daemons, started_with, take_slot, worker_id
from conveyor.agent.logs import send_line
from conveyor.agent.metrics import AgentMetrics
from conveyor.agent.monitor import MachineMonitor
from conveyor.agent.policy import QueuePolicy
from conveyor.agent.process import become_subreaper, end_orphans
from conveyor.agent.schedule import Schedule
from conveyor.agent.timeline import PULLED_AT_ENV
from conveyor.agent.working_hours import PolicyWatch, publish
from conveyor.client.caller import ApiCaller
from conveyor.client.errors import ApiCallError
from conveyor.config import Config
from conveyor.errors import ConveyorError, TaskFailure, UserError
from conveyor.protocol import failure
from conveyor.protocol.failure import FIELD as FAILURE_CLASS
from conveyor.protocol.failure import FailureClass
from conveyor.protocol.ids import looks_like_id
from conveyor.protocol.status import TaskStatus
from conveyor.protocol.worker_state import STATE_FIELD, STATE_REASON_FIELD, WorkerState
from conveyor.runtimes.base import RunHandle, Runtime, TaskRun
from conveyor.runtimes.choice import runtime_for

log = logging.getLogger("conveyor.agent")

LIMITED_WAIT_SEC = 1.0  # the longest long-poll while a queue waits for a run to end (a glue's job limit)
STOP_MARGIN_SEC = 5.0  # after a second stop signal the daemon is gone within agent.kill_grace_sec + this


class DaemonError(UserError):
    """A start-up problem the user can fix (unknown queue, slot taken); printed as one line."""


@dataclass
class DaemonOptions:
    queues: list[str] = field(default_factory=list)
    order_fairness: bool = False
    create_queue: bool = False
    services_mode: int | None = None  # None: one task at a time; 0 or less: unlimited; N: at most N at once
    gpus: str | None = None
    cpu_only: bool = False
    polling_interval: float | None = None
    child_report_tags: list[str] = field(default_factory=list)
    git_user: str | None = None
    git_pass: str | None = None
    log_file: str | None = None
    argv: list[str] = field(default_factory=list)
    docker: list[str] | None = None  # None: tasks run as local processes; else [IMAGE [ENGINE ARGS...]] (maybe [])
    podman: bool = False
    dynamic_gpus: dict[str, GpuRequest] | None = None  # --dynamic-gpus: queue name -> what its tasks get
    launched_by: str = "daemon"  # or "up": `conveyor daemon --stop` leaves `conveyor up` alone unless it is named
    uptime: list[str] | None = None  # else agent.uptime
    downtime: list[str] | None = None  # else agent.downtime

    def started_with(self) -> dict[str, Any]:
        engine = None if self.docker is None else "podman" if self.podman else "docker"
        return started_with(self.launched_by, self.queues, self.gpus, self.cpu_only, engine,
                            self.services_mode is not None)


@dataclass
class Running:
    task_id: str
    queue_id: str
    handle: RunHandle
    sub_worker: str | None = None
    # the task's `status_changed` when this run started it: a later one means another run (a retry the server
    # put back on the queue, started elsewhere) owns the task now; None: unknown (an adopted run)
    run_marker: str | None = None


class Daemon:
    def __init__(self, client: ApiCaller, cfg: Config, opts: DaemonOptions, runtime: Runtime | None = None):
        self.client = client
        self.cfg = cfg
        self.opts = opts
        self.runtime = runtime or runtime_for(
            cfg, opts.docker, podman=opts.podman, gpus="none" if opts.cpu_only else opts.gpus,
            fetch_task=lambda task_id: client.call("tasks.get_by_id", {"task": task_id})["task"])
        self.running: dict[str, Running] = {}
        self.draining = threading.Event()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stop_deadline = float("inf")
        self.slot: Slot | None = None
        self.worker = ""
        self.queue_names: dict[str, str] = {}
        self.policy = QueuePolicy([])
        self.watch = PolicyWatch(client)
        self.state: tuple[WorkerState, str] = (WorkerState.active, "")  # reported with every status report
        self._shown: dict[str, Any] = {}
        self.visible_devices = "none" if opts.cpu_only else opts.gpus
        if opts.dynamic_gpus is not None and opts.gpus:
            self.visible_devices = ",".join(parse_gpu_ids(opts.gpus))
        inventory = GpuInventory(self.visible_devices)
        self.monitor = MachineMonitor(inventory, cfg.get("agent.resource_monitoring.disk_use_path", None))
        self.gpu_broker = None if opts.cpu_only or not opts.gpus else GpuBroker(cfg, inventory, self.visible_devices,
                                                                                opts.dynamic_gpus)
        self.metrics = AgentMetrics()
        self.metrics.watch(lambda: len(self.running), self._gpus_held)
        self._pulled_at: dict[str, float] = {}  # task id -> when its pop answered: its executor's timeline says so

    # --- life cycle -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.slot = take_slot()
        try:
            schedule = Schedule.parse(self.opts.uptime or self.cfg.get("agent.uptime", None),
                                      self.opts.downtime or self.cfg.get("agent.downtime", None))
            self.worker = self._worker_id(self.slot)
            self._check_worker_id_free(self.slot)
            self._take_over_leftovers()
            port = int(self.cfg.get("agent.metrics_port") or 0)
            if port:
                self.metrics.serve(str(self.cfg.get("agent.metrics_host")), port)
            become_subreaper()  # what a crashed executor leaves running is reparented to us, and ended
            queue_ids = self._resolve_queues()
            self.policy = QueuePolicy(queue_ids, fairness=self.opts.order_fairness, schedule=schedule)
            if self.gpu_broker is not None:
                self.gpu_broker.bind(self.queue_names)
                self.gpu_broker.prepare()
            describe(self.slot, self.worker, [self.queue_names[q] for q in queue_ids], self.opts.argv,
                     self.opts.log_file, self.opts.started_with())
            self._install_signal_handlers()
            self._register()
            self._log_banner(queue_ids)
            reporter = threading.Thread(target=self._report_forever, name="status-report", daemon=True)
            reporter.start()
            try:
                self._loop()
            finally:
                try:
                    self.runtime.drain()  # its standby executor, if any, would wait for a task that will not come
                except Exception as exc:  # noqa: BLE001 - logged; the running tasks are still waited for
                    log.warning("could not end the standby executor: %s", exc)
                self._wind_down()
        finally:
            self.metrics.close()
            self.slot.release()
        return 0

    def _worker_id(self, slot: Slot) -> str:
        return worker_id(self.cfg.get("agent.worker_id", None), self.cfg.get("agent.worker_name", None), slot.index,
                         self.opts.gpus, self.opts.cpu_only, dynamic=self.opts.dynamic_gpus is not None)

    def _check_worker_id_free(self, slot: Slot) -> None:
        for other in running_daemons():  # our own slot may still describe a daemon killed before us
            if other.get("worker_id") == self.worker and other.get("pid") != os.getpid() \
                    and other.get("slot") != slot.index:
                raise DaemonError(f"A daemon with worker id {self.worker} already runs here (pid {other.get('pid')})",
                                  hint="Give this one other --gpus, or set agent.worker_id / CLEARML_WORKER_ID")

    def _log_banner(self, queue_ids: list[str]) -> None:
        mode = "long-poll" if self._long_poll() else f"polling every {self._poll_interval():g} s"
        names = ", ".join(f"{self.queue_names[q]} ({q})" for q in queue_ids)
        services = "" if self.opts.services_mode is None else f", services mode (at most {self._capacity() or 'any'})"
        how = self.runtime.describe()
        log.info("conveyor agent %s serving %s; %s%s%s", self.worker, names, mode, services, f", {how}" if how else "")

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            if not self.draining.is_set():
                self.draining.set()
                log.info("%s: no new tasks; waiting for the running ones to finish (send it again to stop them)",
                         signal.Signals(signum).name)
            else:
                if not self.stopping.is_set():
                    self._stop_deadline = time.monotonic() + self._kill_grace() + STOP_MARGIN_SEC
                self.stopping.set()
                log.info("stopping the running tasks")
                self._stop_children()
            self._wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _wind_down(self) -> None:
        """Wait for running tasks (they are stopped if a second signal came), then unregister. After a second
        signal this ends within agent.kill_grace_sec + STOP_MARGIN_SEC, whatever the server or the tasks do:
        executors still there at the deadline are killed with their trees, and the server gets a short try."""
        while self.running:
            self._reap_children()
            if self.running and self.stopping.is_set() and time.monotonic() >= self._stop_deadline - 2:
                self._kill_children()
                continue
            if self.running:
                self._nap(0.2)

        def farewell() -> None:
            self._report()
            for queues in ([], list(self.policy.queue_ids)):
                self._tolerant_call("workers.unregister", {"worker": self.worker, "queues": queues})

        if self.stopping.is_set():  # best effort: a server that is gone must not keep us
            if not self._best_effort(farewell, max(0.5, self._stop_deadline - time.monotonic())):
                log.warning("conveyor agent %s: the server did not answer; exiting without unregistering", self.worker)
                return
        else:
            farewell()
        log.info("conveyor agent %s: unregistered, exiting", self.worker)

    # --- queues ---------------------------------------------------------------------------------------------------
    def _resolve_queues(self) -> list[str]:
        names = list(self.opts.queues)
        if not names:
            try:
                default = self.client.call("queues.get_default", {})
                self.queue_names[default["id"]] = default.get("name") or "default"
                return [default["id"]]
            except ApiCallError as exc:
                log.debug("queues.get_default: %s; using the queue named default", exc)
                names = ["default"]
        return [self._resolve_queue(name) for name in names]

    def _resolve_queue(self, name: str) -> str:
        if looks_like_id(name):
            found = self.client.call("queues.get_all", {"id": [name], "only_fields": ["id", "name"]})["queues"]
            if not found:
                raise DaemonError(f"Could not find queue with id {name}")
            self.queue_names[name] = found[0].get("name", name)
            return name
        found = [q for q in self.client.call("queues.get_all", {"name": re.escape(name),
                                                                "only_fields": ["id", "name"]})["queues"]
                 if (q.get("name") or "").lower() == name.lower()]
        if not found and self.opts.create_queue:
            created = self.client.call("queues.create", {"name": name})
            found = [{"id": created["id"], "name": name}]
        if not found:
            raise DaemonError(f'Could not find queue "{name}"',
                              hint=f"Create it with `conveyor queue create {name}` or start the daemon with "
                                   "--create-queue")
        if len(found) > 1:
            raise DaemonError(f'Found several queues named "{name}"', hint="Pass the queue id instead")
        self.queue_names[found[0]["id"]] = found[0]["name"]
        return str(found[0]["id"])

    def _register(self) -> None:
        self._tolerant_call("workers.register", {
            "worker": self.worker, "queues": self.policy.queue_ids,
            "timeout": int(self.cfg.get("agent.worker_timeout_sec")),
            "tags": self.opts.child_report_tags or None})

    # --- pulling --------------------------------------------------------------------------------------------------
    def _capacity(self) -> int:
        if self.opts.dynamic_gpus is not None:
            return 0  # as many tasks as the GPUs hold
        if self.opts.services_mode is None:
            return 1
        return self.opts.services_mode if self.opts.services_mode > 0 else 0

    def _has_room(self) -> bool:
        capacity = self._capacity()
        return capacity == 0 or len(self.running) < capacity

    def _long_poll(self) -> bool:
        """Long-poll when the server offers it (a ClearML server does not) and agent.long_poll_sec > 0."""
        return self.client.server_supports("long_poll") and float(self.cfg.get("agent.long_poll_sec")) > 0

    def _poll_interval(self) -> float:
        return float(self.opts.polling_interval or self.cfg.get("agent.polling_interval"))

    def _kill_grace(self) -> float:
        return float(self.cfg.get("agent.kill_grace_sec"))

    def _nap(self, seconds: float) -> None:
        """Wait until woken (a signal, a pulled answer) or `seconds` have passed."""
        self._wake.wait(seconds)
        self._wake.clear()

    def _loop(self) -> None:
        """Until draining: reap what ended, wait for room, pull the next task by the queue policy, launch it."""
        long_poll = self._long_poll()
        while not self.draining.is_set():
            self._reap_children()
            self._watch_gpus()
            if not self._has_room():
                self._nap(0.5)
                continue
            if self._gpus_busy():
                continue
            entry = self._pull_for_gpus() if self.opts.dynamic_gpus is not None else self._pull(long_poll)
            if entry is None:
                continue
            task_id, queue_id = entry
            if self.draining.is_set():
                self._give_back(task_id, queue_id)
                break
            self.policy.took_from(queue_id)
            self._launch(task_id, queue_id)
            if self.opts.services_mode is None and self.opts.dynamic_gpus is None:
                self._wait_for(task_id)

    def _pull(self, long_poll: bool) -> tuple[str, str] | None:
        """The next (task, queue) by the policy, or None after waiting as the mode wants (an empty poll, every
        queue paused, a server error)."""
        decision = self.watch.decide(self.policy, self.worker)
        self.set_state(decision.state, decision.reason)
        order = self._open_queues(decision.queues)
        if not decision.queues:  # forced off or idle by schedule: look again soon whether that changed
            self._nap(self.watch.recheck_in(decision, self._poll_interval()))
            return None
        if not order:  # every queue is at its limit (the Slurm glue's max_jobs): wait for a run to end
            self._nap(0.5)
            return None
        cap = self.watch.wait_cap(decision)
        if len(order) < len(decision.queues):  # a queue held back by its limit: look again soon, it may free up
            cap = min(cap or LIMITED_WAIT_SEC, LIMITED_WAIT_SEC)
        try:
            entry = (self._next_task_long(order, cap) if long_poll else self._next_task_polling(order))
        except ConveyorError as exc:
            log.warning("could not get a task: %s", exc)
            self._wake.wait(min(self._poll_interval(), 5.0))
            return None
        if entry is None and not long_poll:
            self._nap(self._poll_interval())
        return entry

    def _open_queues(self, order: list[str]) -> list[str]:
        """The queues of `order` this agent may pull from now; a glue leaves out those at their job limit."""
        return order

    # --- GPUs (the logic is in gpu_broker.py) -----------------------------------------------------------------------
    def _task_roots(self) -> dict[str, int]:
        return {r.task_id: pid for r in list(self.running.values()) if (pid := r.handle.pid)}

    def _gpus_busy(self) -> bool:
        """--gpus: processes not our tasks' hold memory on our GPUs; wait, and say why."""
        if self.gpu_broker is None or self.opts.dynamic_gpus is not None:
            return False
        reason = self.gpu_broker.wait_reason(self._task_roots())
        if reason:  # once the GPUs are free, the next pull reports the policy's state
            self.set_state(WorkerState.waiting_for_gpu, reason)
            self._nap(self._gpu_poll())
        return reason is not None

    def _gpu_poll(self) -> float:
        return float(self.cfg.get("agent.gpu_wait_poll_sec"))

    def _pull_for_gpus(self) -> tuple[str, str] | None:
        """--dynamic-gpus: pull from the queues whose request the free GPUs hold now (polling: what is free changes
        with every task that starts or ends)."""
        assert self.gpu_broker is not None
        decision = self.watch.decide(self.policy, self.worker)  # forcing and working hours first
        if not decision.queues:
            self.set_state(decision.state, decision.reason)
            self._nap(self.watch.recheck_in(decision, self._gpu_poll()))
            return None
        try:
            eligible, reason = self.gpu_broker.queues_now(decision.queues, self._has_waiting, self._task_roots(),
                                                          self.queue_names)
            if reason:
                self.set_state(WorkerState.waiting_for_gpu, reason)
            else:
                self.set_state(decision.state, decision.reason)
            entry = self._next_task_polling(eligible) if eligible else None
        except ConveyorError as exc:
            log.warning("could not get a task: %s", exc)
            entry = None
        if entry is None:
            self._nap(self._gpu_poll())
        return entry

    def _has_waiting(self, queue_id: str) -> bool:
        queue = self.client.call("queues.get_by_id", {"queue": queue_id})["queue"]
        return bool(queue.get("entries"))

    def _watch_gpus(self) -> None:
        """Fractional tasks past their share of GPU memory: a warning in the task's log, then a stop."""
        if self.gpu_broker is None:
            return
        for verdict in self.gpu_broker.watch(self._task_roots()):
            if not verdict.stop:
                self._task_log(verdict.task_id, verdict.message + "\n", "warning")
                continue
            log.warning("task %s: %s", verdict.task_id, verdict.message)
            self._task_log(verdict.task_id, f"conveyor: {verdict.message}\n", "error")
            # its executor sees the final status and ends the task's processes
            self._tolerant_call("tasks.stopped", {"task": verdict.task_id, "force": True,
                                                  "status_reason": verdict.message})

    def _next_task_long(self, order: list[str], cap: float | None) -> tuple[str, str] | None:
        # `worker` (a Conveyor addition) lets the server end the wait when this worker's runtime properties change
        wait = min(float(self.cfg.get("agent.long_poll_sec")), cap or float("inf"))
        result: list[dict[str, Any] | ConveyorError] = []

        def pull() -> None:
            try:
                answer = self.client.call("queues.get_next_task", {"queue": order[0], "queues": order, "wait": wait,
                                                                  "worker": self.worker},
                                          timeout=wait + 30)
                entry = answer.get("entry")
                if entry and self.draining.is_set():  # popped after we stopped taking work: hand it back
                    self._give_back(entry["task"], answer.get("queue") or order[0])
                    answer = {}
                result.append(answer)
            except ConveyorError as exc:  # handed to the loop below
                result.append(exc)
            except Exception as exc:  # anything else too: the loop must not wait for an answer that never comes
                log.exception("queues.get_next_task")
                result.append(ConveyorError(str(exc)))
            self._wake.set()

        # The pull runs in a thread so that a signal is answered at once. If we exit while it waits, the
        # server sees the connection close and pops nothing for it; a task it pops after draining began
        # goes back to the front of its queue.
        puller = threading.Thread(target=pull, name="pull", daemon=True)
        puller.start()
        while not result and not self.draining.is_set():
            self._nap(0.5)
            self._reap_children()
        if not result:
            return None
        answer = result[0]
        if isinstance(answer, ConveyorError):
            raise answer
        entry = answer.get("entry")
        if not entry:
            return None
        self._pulled_at[entry["task"]] = time.time()
        return entry["task"], answer.get("queue") or order[0]

    def _next_task_polling(self, order: list[str]) -> tuple[str, str] | None:
        for queue_id in order:
            answer = self.client.call("queues.get_next_task", {"queue": queue_id}, version="2.14")
            if answer.get("entry"):
                self._pulled_at[answer["entry"]["task"]] = time.time()
                return answer["entry"]["task"], queue_id
        return None

    def _give_back(self, task_id: str, queue_id: str) -> None:
        """A task popped while draining goes back to the front of its queue (it is still `queued`)."""
        try:
            self.client.call("queues.add_task", {"queue": queue_id, "task": task_id})
            self.client.call("queues.move_task_to_front", {"queue": queue_id, "task": task_id})
        except ConveyorError as exc:
            log.warning("task %s: could not give it back to queue %s: %s", task_id, queue_id, exc)

    # --- running --------------------------------------------------------------------------------------------------
    def _launch(self, task_id: str, queue_id: str) -> None:
        queue_name = self.queue_names.get(queue_id, queue_id)
        pulled_at = self._pulled_at.pop(task_id, None)
        self._make_way(task_id)
        run_marker: str | None = None
        try:
            answer = self.client.call("tasks.started", {"task": task_id, "force": True,
                                                        "status_message": "pulled by agent"})
            changed = (answer.get("fields") or {}).get("status_changed") if isinstance(answer, dict) else None
            run_marker = str(changed) if changed else None
        except ApiCallError as exc:  # e.g. already started elsewhere: the executor decides
            log.debug("tasks.started (%s): %s", task_id, exc)
        sub_worker = f"{self.worker}:service:{task_id}" if self.opts.services_mode is not None else None
        gpu_env: dict[str, str] = {}
        if self.opts.dynamic_gpus is not None and self.gpu_broker is not None:
            allocation = self.gpu_broker.take(task_id, queue_id, self._task_roots())
            if allocation is None:  # a GPU became busy since the queues were chosen
                self._give_back(task_id, queue_id)
                return
            sub_worker = f"{self.worker.rsplit(':dgpu', 1)[0]}:{allocation.suffix}"
            gpu_env = self.gpu_broker.env(allocation)
        if pulled_at is not None:
            gpu_env[PULLED_AT_ENV] = repr(pulled_at)
        self._task_log(task_id, f"task {task_id} pulled from {queue_id} ({queue_name}) by worker {self.worker}\n")
        try:
            handle = self.runtime.launch(TaskRun(task_id, queue_id, self.worker, sub_worker),
                                         {**self._executor_env(sub_worker), **gpu_env})
        except TaskFailure as exc:
            if self.gpu_broker is not None:
                self.gpu_broker.release(task_id)
            log.error("task %s: %s", task_id, exc)
            self._task_log(task_id, f"conveyor: {exc}\n", "error")
            self._tolerant_call("tasks.failed", {"task": task_id, "force": True, "status_reason": str(exc),
                                                 FAILURE_CLASS: exc.failure_class})
            return
        with self._lock:
            self.running[task_id] = Running(task_id, queue_id, handle, sub_worker, run_marker)
        self.metrics.pickups.labels(queue_name).inc()
        log.info("running task %s from %s (%s)", task_id, queue_name, handle.describe())
        if sub_worker:
            self._tolerant_call("workers.register", {"worker": sub_worker, "queues": [queue_id],
                                                     "timeout": int(self.cfg.get("agent.worker_timeout_sec"))})
        self._report()

    def _make_way(self, task_id: str) -> None:
        """A task this daemon pulled while an earlier run of it is still recorded here (services mode: its executor
        reported an infrastructure failure, the server put it back on the queue, and this daemon took the retry
        before it saw that executor end): that run is settled first, so the new one does not overwrite it. Its
        executor, whose run the server has already ended, gets agent.kill_grace_sec to exit, then is killed."""
        earlier = self.running.get(task_id)
        if earlier is None:
            return
        deadline = time.monotonic() + self._kill_grace()
        while (code := earlier.handle.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if code is None:
            log.warning("task %s: pulled again while its earlier executor still runs; ending that one", task_id)
            earlier.handle.kill()
            deadline = time.monotonic() + 2
            while (code := earlier.handle.poll()) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        with self._lock:
            self.running.pop(task_id, None)
        self._after_exit(earlier, code if code is not None else -9)

    def _executor_env(self, sub_worker: str | None) -> dict[str, str]:
        """What the daemon adds to the executor's environment: who it works for, which GPUs, git credentials."""
        env = {"CLEARML_WORKER_ID": sub_worker or self.worker, "CONVEYOR_UNDER_DAEMON": "1"}
        if self.visible_devices is not None:
            env["NVIDIA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] = self.visible_devices
        if self.opts.git_user:
            env["CLEARML_AGENT_GIT_USER"] = self.opts.git_user
        if self.opts.git_pass:
            env["CLEARML_AGENT_GIT_PASS"] = self.opts.git_pass
        if self.opts.child_report_tags:
            env["CLEARML_WORKER_TAGS"] = " ".join(self.opts.child_report_tags)
        return env

    def _wait_for(self, task_id: str) -> None:
        while task_id in self.running and not self.stopping.is_set():  # a second signal: _wind_down takes over
            self._reap_children()
            if task_id in self.running:
                self._nap(0.2)

    def _reap_children(self) -> None:
        for run in list(self.running.values()):
            code = run.handle.poll()
            if code is None:
                continue
            with self._lock:
                self.running.pop(run.task_id, None)
            self._after_exit(run, code)

    def _after_exit(self, run: Running, code: int) -> None:
        """The executor sets the final status; if it died before it could, the task must not stay running, and
        whatever of the task it left behind (reparented to us, the subreaper) is ended."""
        if code != 0:
            live = frozenset(pid for r in self.running.values() if (pid := r.handle.pid)) | self.runtime.standby_pids()
            left = end_orphans(self._kill_grace(), keep=live)
            if left:
                log.warning("task %s: ended %d process(es) its executor left running", run.task_id, left)
        if self.stopping.is_set():  # stopping for good: the server gets a short try, not the retries
            self._best_effort(lambda: self._settle(run, code), 1.0)
        else:
            self._settle(run, code)
        log.info("task %s ended (executor exit code %s)", run.task_id, code)

    @staticmethod
    def _best_effort(work: Callable[[], None], timeout: float) -> bool:
        """Run `work` (server calls) for at most `timeout` seconds; True when it finished."""
        thread = threading.Thread(target=work, name="best-effort", daemon=True)
        thread.start()
        thread.join(timeout)
        return not thread.is_alive()

    def _settle(self, run: Running, code: int) -> None:
        """The server's side of an ended executor: a task it left in_progress fails; its sub-worker goes. The run's
        outcome and timeline (sent by its executor with the final status) go to the metrics."""
        ended = self._task_as_ended(run.task_id)
        if ended is not None and ended.get("status") == TaskStatus.in_progress and self._still_ours(run, ended):
            reason = run.handle.start_failure  # a run that never started its executor says why
            # a container whose image does not exist is the task's failure; anything else here the machine's
            failure_class = failure.of_image(reason) if reason else FailureClass.infrastructure
            ended.update({"status": TaskStatus.failed.value, FAILURE_CLASS: failure_class.value,
                          failure.ATTEMPTS_FIELD: []})  # as failed just below
            if reason:
                self._task_log(run.task_id, f"conveyor: {reason}\n", "error")
            # its executor never started, or died (killed, out of memory): the machine's fault, not the task's
            self._tolerant_call("tasks.failed", {"task": run.task_id, "force": True, "status_reason": reason or
                                                 f"the task's executor exited with code {code} "
                                                 "without reporting a final status",
                                                 FAILURE_CLASS: failure_class.value})
        if run.sub_worker:
            self._tolerant_call("workers.unregister", {"worker": run.sub_worker, "queues": []})
        if self.gpu_broker is not None:
            self.gpu_broker.release(run.task_id)
        if ended is not None:  # once the run's GPUs are free: a scrape never sees the outcome with them held
            self.metrics.ended(ended)
        self._report()

    @staticmethod
    def _still_ours(run: Running, task: dict[str, Any]) -> bool:
        """Whether the task is still in the run this daemon launched, not in a later one: after its executor reported
        an infrastructure failure, the server put the task back on its queue and another daemon (or this one) may
        have started the retry before this daemon saw its executor end."""
        return run.run_marker is None or str(task.get("status_changed") or "") == run.run_marker

    def _task_as_ended(self, task_id: str) -> dict[str, Any] | None:
        """The task's status, failure class, attempts and timeline after its executor ended (None: gone, or the server
        did not answer)."""
        try:
            found = self.client.call("tasks.get_all", {"id": [task_id], "search_hidden": True, "only_fields": [
                "status", "status_changed", failure.FIELD, failure.ATTEMPTS_FIELD, "timeline"]})["tasks"]
        except ConveyorError as exc:
            log.warning("task %s: could not read its status: %s", task_id, exc)
            return None
        return dict(found[0]) if found else None

    @staticmethod
    def _last_attempt(task: dict[str, Any]) -> int:
        """The number of the task's last failed run (0: none): it grows with each failure the server records."""
        attempts = task.get(failure.ATTEMPTS_FIELD)
        if not isinstance(attempts, list) or not attempts:
            return 0
        last = attempts[-1]
        try:
            return int(last.get("attempt") or len(attempts)) if isinstance(last, dict) else len(attempts)
        except (TypeError, ValueError):
            return len(attempts)

    def _still_in_progress(self, task_id: str) -> bool:
        found = self._task_as_ended(task_id)
        return found is not None and found.get("status") == TaskStatus.in_progress

    def _gpus_held(self) -> dict[str, float]:
        """Each GPU's share given to running tasks: dynamic GPUs by their allocations, fixed ones whole while a
        task runs."""
        broker = self.gpu_broker
        if broker is None:
            return {}
        if broker.dynamic is not None:
            pool = broker.dynamic.pool
            return {gpu: min(pool.used(gpu) / EIGHTHS, 1.0) for gpu in pool.gpus}
        busy = 1.0 if self.running else 0.0
        return {gpu: busy for gpu in broker.gpus or []}

    def _take_over_leftovers(self) -> None:
        """What a killed daemon with this worker id left: a run still going is adopted (watched, reported, counted
        against the capacity); for one gone, a task left in_progress fails with the runtime's reason."""
        for left in self.runtime.adopt(self.worker):
            if left.handle is not None:
                found = self._task_as_ended(left.task_id)  # its run, as the server has it now: see _still_ours
                marker = str(found["status_changed"]) if found is not None and found.get("status_changed") else None
                with self._lock:
                    self.running[left.task_id] = Running(left.task_id, left.queue_id, left.handle, left.sub_worker,
                                                         marker)
                if self.gpu_broker is not None:
                    self.gpu_broker.adopt(left.task_id, left.sub_worker)
                log.info("adopted task %s (executor %s), left running by a previous daemon with this worker id",
                         left.task_id, left.handle.describe())
                self._task_log(left.task_id, f"conveyor: the agent {self.worker} restarted and adopted this task\n")
            elif self._still_in_progress(left.task_id):
                self._tolerant_call("tasks.failed", {"task": left.task_id, "force": True,
                                                     "status_reason": left.reason,
                                                     FAILURE_CLASS: FailureClass.infrastructure.value})

    def _kill_children(self) -> None:
        """The stop deadline has come: kill the executors that are left and everything under them."""
        for run in list(self.running.values()):
            run.handle.kill()
        end_orphans(0.5)
        deadline = time.monotonic() + 2
        while self.running and time.monotonic() < deadline:
            self._reap_children()
            time.sleep(0.05)
        with self._lock:
            self.running.clear()

    def _stop_children(self) -> None:
        for run in list(self.running.values()):
            run.handle.stop(self._kill_grace())  # the executor stops its task and marks it stopped

    # --- talking to the server ------------------------------------------------------------------------------------
    def _tolerant_call(self, endpoint: str, body: dict[str, Any], level: int = logging.WARNING) -> None:
        """A call whose failure must not stop the daemon (the next report, the executor, or the server's own
        timeout makes up for it): a failure is logged with the call, then work goes on."""
        try:
            self.client.call(endpoint, body)
        except ConveyorError as exc:
            log.log(level, "%s (%s): %s", endpoint, body.get("task") or body.get("worker") or "", exc)

    def _task_log(self, task_id: str, msg: str, level: str = "info") -> None:
        """One line in the task's log, as the worker."""
        try:
            send_line(self.client, task_id, self.worker, msg, level)
        except ConveyorError as exc:
            log.debug("task %s: could not add to its log: %s", task_id, exc)

    # --- reporting ------------------------------------------------------------------------------------------------
    def _report_forever(self) -> None:
        interval = float(self.cfg.get("agent.status_report_interval_sec"))
        time.sleep(min(1.0, interval))
        while not self.stopping.is_set():
            self._report(stats=True)
            if self.stopping.wait(interval):
                return

    def set_state(self, state: WorkerState, reason: str = "") -> None:
        """What the worker does besides running tasks, shown by `worker list`; a change is reported at once."""
        if (state, reason) != self.state:
            self.state = (state, reason)
            log.info("worker state: %s%s", state.value, f" ({reason})" if reason else "")
            if self.worker:
                self._report()
        shown = {STATE_FIELD: state.value, STATE_REASON_FIELD: reason, "schedule": self.policy.schedule.describe(),
                 "queue_tags": {self.queue_names.get(q, q): tags for q, tags in self.policy.tags.items()}}
        if shown != self._shown:  # for `conveyor daemon --status`
            self._shown = shown
            publish(self.slot, shown)

    def _report(self, stats: bool = False) -> None:
        base = {"timestamp": int(time.time()) * 1000, "is_daemon": True, "tags": self.opts.child_report_tags or None}
        runs = list(self.running.values())
        body = dict(base, worker=self.worker, queues=self.policy.queue_ids,
                    machine_stats=self.monitor.sample() if stats else None)
        if self.client.server_supports("worker_state"):  # a ClearML server has no use for it: it is not sent there
            body.update({STATE_FIELD: self.state[0].value, STATE_REASON_FIELD: self.state[1]})
        if self.opts.services_mode is None and runs and not runs[0].sub_worker:
            body.update(task=runs[0].task_id, queue=runs[0].queue_id)
        self._tolerant_call("workers.status_report", body, logging.DEBUG)  # the next report comes soon
        for run in runs:
            if run.sub_worker:
                self._tolerant_call("workers.status_report", dict(base, worker=run.sub_worker, queues=[run.queue_id],
                                                                  task=run.task_id, queue=run.queue_id,
                                                                  machine_stats=None), logging.DEBUG)
