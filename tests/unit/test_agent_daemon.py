"""The daemon against an in-memory server and a fake runtime: what it pulls, how it launches, what it reports when
a run cannot start or ends without a status, how it stops runs and takes over what a previous daemon left."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from conveyor.agent import daemon as daemon_module
from conveyor.agent.daemon import Daemon, DaemonOptions
from conveyor.agent.policy import QueuePolicy
from conveyor.client.errors import ServerUnreachable
from conveyor.config import Config, load_config
from conveyor.errors import TaskFailure
from conveyor.protocol.tags import QUEUE_PAUSED
from conveyor.runtimes.base import Leftover, RunHandle, TaskRun


class FakeApi:
    """The server's side of the calls the agent makes, in memory (an ApiCaller)."""

    def __init__(self, queues: Mapping[str, list[str]] | None = None):
        self.queues = {q: list(tasks) for q, tasks in (queues or {}).items()}
        self.queue_tags: dict[str, list[str]] = {}
        self.tasks: dict[str, dict[str, Any]] = {t: {"status": "queued"} for ts in self.queues.values() for t in ts}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []
        self.down: set[str] = set()  # endpoints that fail as if the server were unreachable

    # ApiCaller
    def call(self, endpoint: str, body: dict[str, Any] | None = None, *, version: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        body = body or {}
        self.calls.append((endpoint, body))
        if endpoint in self.down:
            raise ServerUnreachable("http://fake", "connection refused")
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(self, endpoint.replace(".", "_"), None)
        return handler(body) if handler else {}

    def call_lines(self, endpoint: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        self.events += events
        return {"added": len(events)}

    def server_supports(self, feature: str) -> bool:
        return False

    def auth_token(self) -> str:
        return "session-token"

    # what a test looks at
    def status(self, task: str) -> tuple[str, str]:
        return self.tasks[task]["status"], self.tasks[task].get("status_reason", "")

    def log_of(self, task: str) -> list[str]:
        return [e["msg"] for e in self.events if e["task"] == task]

    def called(self, endpoint: str) -> list[dict[str, Any]]:
        return [body for name, body in self.calls if name == endpoint]

    # endpoints
    def queues_get_next_task(self, body: dict[str, Any]) -> dict[str, Any]:
        waiting = self.queues.get(body["queue"]) or []
        return {"entry": {"task": waiting.pop(0)}} if waiting else {}

    def queues_get_all(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"queues": [{"id": q, "name": q, "tags": self.queue_tags.get(q, [])}
                           for q in body.get("id") or list(self.queues)]}

    def tasks_get_all(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"tasks": [{"id": t, **self.tasks[t]} for t in body["id"] if t in self.tasks]}

    def tasks_get_by_id(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"task": {"id": body["task"], **self.tasks[body["task"]]}}

    def tasks_dequeue(self, body: dict[str, Any]) -> dict[str, Any]:
        task = self.tasks[body["task"]]
        if task["status"] != "queued":
            return {"updated": 0}
        task["status"] = body.get("new_status") or "created"
        return {"updated": 1}

    def _set(self, body: dict[str, Any], status: str) -> dict[str, Any]:
        task = self.tasks.setdefault(body["task"], {})
        task["status"] = status
        task.update({k: body[k] for k in ("status_reason", "status_message") if k in body})
        return {"updated": 1}

    def tasks_started(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._set(body, "in_progress")

    def tasks_failed(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._set(body, "failed")

    def tasks_completed(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._set(body, "completed")

    def tasks_stopped(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._set(body, "stopped")


class FakeRun:
    """A run that ends when the test says so, with the exit code (and start failure) it was given."""

    def __init__(self, task_id: str, code: int | None = 0, start_failure: str | None = None):
        self.task_id = task_id
        self.code = code
        self._start_failure = start_failure
        self.stopped_with: float | None = None
        self.killed = False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def start_failure(self) -> str | None:
        return self._start_failure if self.code is not None else None

    def poll(self) -> int | None:
        return self.code

    def stop(self, grace: float) -> None:
        self.stopped_with = grace

    def kill(self) -> None:
        self.killed = True
        self.code = -9

    def describe(self) -> str:
        return "nowhere"


class FakeRuntime:
    """Launches nothing: each run is what `behaviour(task_id)` makes of it; by default the executor completes the
    task (reports `completed` itself, as a real one does) and exits 0."""

    def __init__(self, api: FakeApi, behaviour: Callable[[str], FakeRun] | None = None,
                 leftovers: list[Leftover] | None = None):
        self.api = api
        self.behaviour = behaviour
        self.leftovers = leftovers or []
        self.launched: list[TaskRun] = []
        self.envs: list[Mapping[str, str]] = []
        self.handles: list[FakeRun] = []

    def describe(self) -> str:
        return "tasks nowhere"

    def adopt(self, worker: str) -> list[Leftover]:
        return self.leftovers

    def standby_pids(self) -> frozenset[int]:
        return frozenset()

    def drain(self) -> None:
        self.drained = True

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> RunHandle:
        self.launched.append(run)
        self.envs.append(env)
        if self.behaviour is not None:
            handle = self.behaviour(run.task_id)
        else:
            self.api.tasks[run.task_id]["status"] = "completed"
            handle = FakeRun(run.task_id)
        self.handles.append(handle)
        return handle


def config(tmp_path: Path, **agent: Any) -> Config:
    data = load_config(environ={"HOME": str(tmp_path)}).as_dict(masked=False)
    data["agent"].update(agent)
    return Config(data)


@pytest.fixture(autouse=True)
def no_process_reaping(monkeypatch: pytest.MonkeyPatch) -> None:
    """end_orphans ends every child of this process: in a test run, those would be the test session's own."""
    monkeypatch.setattr(daemon_module, "end_orphans", lambda grace, keep=frozenset(): 0)


def make_daemon(tmp_path: Path, api: FakeApi, runtime: FakeRuntime, *, fairness: bool = False,
                services_mode: int | None = None) -> Daemon:
    daemon = Daemon(api, config(tmp_path, kill_grace_sec=7), DaemonOptions(
        polling_interval=0.001, services_mode=services_mode, order_fairness=fairness), runtime=runtime)
    daemon.worker = "host:0"
    daemon.queue_names = {q: q for q in api.queues}
    daemon.policy = QueuePolicy(list(api.queues), fairness=fairness)
    return daemon


def serve_until(daemon: Daemon, done: Callable[[], bool], timeout: float = 3.0) -> None:
    """Run the daemon's loop until `done()`, then drain it as a first signal would."""
    loop = threading.Thread(target=daemon._loop, daemon=True)
    loop.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.002)
    daemon.draining.set()
    daemon._wake.set()
    loop.join(2.0)
    assert not loop.is_alive(), "the loop did not stop when draining"
    assert done(), "the condition was not reached in time"


def launched(runtime: FakeRuntime) -> list[str]:
    return [run.task_id for run in runtime.launched]


def test_queues_are_served_in_priority_order(tmp_path: Path) -> None:
    api = FakeApi({"high": ["h1", "h2"], "low": ["l1", "l2"]})
    runtime = FakeRuntime(api)
    daemon = make_daemon(tmp_path, api, runtime)
    serve_until(daemon, lambda: len(runtime.launched) == 4)
    assert launched(runtime) == ["h1", "h2", "l1", "l2"]
    assert all(api.status(t)[0] == "completed" for t in launched(runtime))


def test_with_fairness_the_queues_take_turns(tmp_path: Path) -> None:
    api = FakeApi({"a": ["a1", "a2"], "b": ["b1", "b2"]})
    runtime = FakeRuntime(api)
    serve_until(make_daemon(tmp_path, api, runtime, fairness=True), lambda: len(runtime.launched) == 4)
    assert launched(runtime) == ["a1", "b1", "a2", "b2"]


def test_a_paused_queue_is_not_served_until_resumed(tmp_path: Path) -> None:
    api = FakeApi({"a": ["a1"], "b": ["b1"]})
    api.queue_tags["a"] = [QUEUE_PAUSED]
    runtime = FakeRuntime(api)
    daemon = make_daemon(tmp_path, api, runtime)
    serve_until(daemon, lambda: len(runtime.launched) == 1)
    time.sleep(0.02)  # several more polls
    assert launched(runtime) == ["b1"] and api.queues["a"] == ["a1"]
    api.queue_tags["a"] = []
    daemon.draining.clear()
    serve_until(daemon, lambda: len(runtime.launched) == 2)
    assert launched(runtime) == ["b1", "a1"]


def test_a_worker_forced_off_pulls_nothing_and_reports_why(tmp_path: Path) -> None:
    api = FakeApi({"q": ["t1"]})
    props = [{"key": "force", "value": "off"}]
    api.workers_get_runtime_properties = lambda body: {"runtime_properties": props}  # type: ignore[attr-defined]
    api.server_supports = lambda feature: feature == "worker_state"  # type: ignore[method-assign]
    runtime = FakeRuntime(api)
    daemon = make_daemon(tmp_path, api, runtime)
    serve_until(daemon, lambda: len(api.called("workers.get_runtime_properties")) > 5)
    assert launched(runtime) == [] and api.queues["q"] == ["t1"]
    assert {k: api.called("workers.status_report")[-1][k] for k in ("state", "state_reason")} == {
        "state": "forced_off", "state_reason": "forced off"}
    props.clear()
    daemon.draining.clear()
    serve_until(daemon, lambda: len(runtime.launched) == 1)
    assert api.called("workers.status_report")[-1]["state"] == "active"


def test_the_run_gets_the_worker_ids_and_what_the_executor_needs(tmp_path: Path) -> None:
    api = FakeApi({"q": ["t1"]})
    runtime = FakeRuntime(api)
    daemon = make_daemon(tmp_path, api, runtime, services_mode=0)
    serve_until(daemon, lambda: len(runtime.launched) == 1)
    run, env = runtime.launched[0], runtime.envs[0]
    assert (run.task_id, run.queue_id, run.worker, run.sub_worker) == ("t1", "q", "host:0", "host:0:service:t1")
    assert env["CLEARML_WORKER_ID"] == "host:0:service:t1" and env["CONVEYOR_UNDER_DAEMON"] == "1"
    assert any("pulled from q (q) by worker host:0" in line for line in api.log_of("t1"))
    assert [b["worker"] for b in api.called("workers.register")] == ["host:0:service:t1"]


def test_a_run_that_cannot_be_launched_fails_its_task_with_the_reason_and_the_daemon_goes_on(tmp_path: Path) -> None:
    api = FakeApi({"q": ["bad", "good"]})

    def behaviour(task_id: str) -> FakeRun:
        if task_id == "bad":
            raise TaskFailure("container failed to start: no container image")
        api.tasks[task_id]["status"] = "completed"
        return FakeRun(task_id)

    runtime = FakeRuntime(api, behaviour)
    serve_until(make_daemon(tmp_path, api, runtime), lambda: api.status("good")[0] == "completed")
    assert api.status("bad") == ("failed", "container failed to start: no container image")
    assert "conveyor: container failed to start: no container image\n" in api.log_of("bad")


def test_a_run_that_never_started_its_executor_fails_with_the_runtimes_reason(tmp_path: Path) -> None:
    api = FakeApi({"q": ["t1"]})
    runtime = FakeRuntime(api, lambda t: FakeRun(t, code=125, start_failure="container failed to start: denied"))
    serve_until(make_daemon(tmp_path, api, runtime), lambda: api.status("t1")[0] == "failed")
    assert api.status("t1") == ("failed", "container failed to start: denied")
    assert "conveyor: container failed to start: denied\n" in api.log_of("t1")


def test_an_executor_that_dies_without_a_status_fails_its_task(tmp_path: Path) -> None:
    api = FakeApi({"q": ["t1", "t2"]})

    def behaviour(task_id: str) -> FakeRun:
        if task_id == "t2":  # this one reports its own final status before it exits
            api.tasks[task_id]["status"] = "completed"
        return FakeRun(task_id, code=137)

    runtime = FakeRuntime(api, behaviour)
    serve_until(make_daemon(tmp_path, api, runtime), lambda: len(runtime.launched) == 2 and not api.queues["q"])
    assert api.status("t1") == ("failed", "the task's executor exited with code 137 without reporting a final status")
    assert api.status("t2")[0] == "completed", "a task its executor settled is left alone"


def test_a_second_signal_stops_the_running_tasks_with_the_configured_grace(tmp_path: Path) -> None:
    api = FakeApi({"q": ["t1", "t2"]})
    runtime = FakeRuntime(api, lambda t: FakeRun(t, code=None))  # they run until stopped
    daemon = make_daemon(tmp_path, api, runtime, services_mode=0)
    serve_until(daemon, lambda: len(runtime.launched) == 2)
    daemon.draining.clear()  # as it was while serving, before any signal
    original = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        daemon._install_signal_handlers()
        on_signal = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, original[0])
        signal.signal(signal.SIGINT, original[1])
    assert callable(on_signal)
    on_signal(signal.SIGTERM, None)
    assert daemon.draining.is_set() and [h.stopped_with for h in runtime.handles] == [None, None], \
        "the first signal only drains"
    on_signal(signal.SIGTERM, None)
    assert daemon.stopping.is_set() and [h.stopped_with for h in runtime.handles] == [7.0, 7.0]


def test_leftovers_of_a_previous_daemon_are_adopted_or_failed(tmp_path: Path) -> None:
    api = FakeApi({"q": []})
    api.tasks.update({"alive": {"status": "in_progress"}, "gone": {"status": "in_progress"},
                      "done": {"status": "completed"}})
    still_running = FakeRun("alive", code=None)
    runtime = FakeRuntime(api, leftovers=[
        Leftover("alive", "q", None, still_running),
        Leftover("gone", reason="its executor was gone when the agent restarted"),
        Leftover("done", reason="its executor was gone when the agent restarted")])
    daemon = make_daemon(tmp_path, api, runtime, services_mode=1)
    daemon._take_over_leftovers()
    assert list(daemon.running) == ["alive"] and not daemon._has_room(), "an adopted run counts against capacity"
    assert "conveyor: the agent host:0 restarted and adopted this task\n" in api.log_of("alive")
    assert api.status("gone") == ("failed", "its executor was gone when the agent restarted")
    assert api.status("done")[0] == "completed"
    still_running.code = 0
    api.tasks["alive"]["status"] = "completed"
    daemon._reap_children()
    assert not daemon.running


def test_an_unreachable_server_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi({"q": []})
    api.down.add("workers.register")
    daemon = make_daemon(tmp_path, api, FakeRuntime(api))
    with caplog.at_level("WARNING", logger="conveyor.agent"):
        daemon._register()
    assert any("workers.register" in r.getMessage() and "Cannot reach" in r.getMessage() for r in caplog.records)


class StampingApi(FakeApi):
    """tasks.started answers the task's `status_changed`, as the server does: a new one each time it starts."""

    def __init__(self, queues: Mapping[str, list[str]]):
        super().__init__(queues)
        self.stamps = 0

    def tasks_started(self, body: dict[str, Any]) -> dict[str, Any]:
        self.stamps += 1
        self.tasks[body["task"]]["status_changed"] = f"stamp-{self.stamps}"
        super().tasks_started(body)
        return {"updated": 1, "fields": {"status": "in_progress", "status_changed": f"stamp-{self.stamps}"}}


@pytest.mark.parametrize("retried_elsewhere", [True, False])
def test_an_executor_that_ended_fails_only_the_run_it_was(tmp_path: Path, retried_elsewhere: bool) -> None:
    """The executor reported an infrastructure failure and exited; before the daemon saw it end, the server queued
    the retry and another daemon started it: the task is in_progress again, but not in this daemon's run, which
    must leave it alone. Still in this daemon's run, the task fails as an executor that died."""
    api = StampingApi({"q": ["t1"]})
    runtime = FakeRuntime(api, behaviour=lambda task: FakeRun(task, code=None))
    daemon = make_daemon(tmp_path, api, runtime)
    daemon._launch("t1", "q")
    if retried_elsewhere:
        api.tasks["t1"].update({"status": "in_progress", "status_changed": "stamp-of-another-daemon"})
    runtime.handles[0].code = 1
    daemon._reap_children()
    failed = api.called("tasks.failed")
    if retried_elsewhere:
        assert failed == [] and api.status("t1")[0] == "in_progress"
    else:
        assert [(b["task"], b["failure_class"]) for b in failed] == [("t1", "infrastructure")]


def test_a_task_pulled_again_while_its_earlier_run_is_recorded_settles_that_run_first(tmp_path: Path) -> None:
    """Services mode: the executor failed the run, the server queued the retry, and this daemon pulled it before it
    saw the executor end. The earlier run is settled (not failed: its task is queued again), then the retry runs
    under its own handle instead of overwriting the earlier one."""
    api = StampingApi({"q": ["t1"]})
    runtime = FakeRuntime(api, behaviour=lambda task: FakeRun(task, code=None))
    daemon = make_daemon(tmp_path, api, runtime, services_mode=0)
    daemon._launch("t1", "q")
    first = runtime.handles[0]
    first.code = 1  # its executor reported the failure and exited; the server queued the retry
    api.tasks["t1"]["status"] = "queued"
    daemon._launch("t1", "q")
    assert api.called("tasks.failed") == [], "the retry was failed as the earlier run's end"
    assert [b["worker"] for b in api.called("workers.unregister")] == ["host:0:service:t1"]
    assert daemon.running["t1"].handle is runtime.handles[1] and len(runtime.handles) == 2
    assert api.status("t1")[0] == "in_progress"
