"""Retries that know why: every failure is `infrastructure` or `task`; `retries: N` (a task's user property or its
queue's metadata) puts an infrastructure failure back at the front of its queue up to N times, a task failure never.
Real server, real daemons."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentkit import (
    DaemonProcess,
    agent_env,
    create_task,
    enqueue,
    executor_of,
    log_text,
    make_repo,
    processes_with,
    wait_final,
    wait_for_line,
)
from browserkit import ui  # noqa: F401 - the fixture
from conftest import ServerProcess, free_port
from conveyor.client.errors import ApiCallError
from conveyor.server.model import deliveries, queues
from conveyor.server.store import Store
from conveyor.server.store.database import sqlite_url
from conveyor.server.store.documents import add_entry

# Once per machine: the first run (no marker file yet) hangs until it is killed, the next one completes.
ONCE_HANGS = r"""
import os, sys, time
marker = sys.argv[2]
print(f"run on {os.environ['CLEARML_WORKER_ID']}", flush=True)
if not os.path.exists(marker):
    open(marker, "w").close()
    print("first run: hanging", flush=True)
    time.sleep(600)
print("second run: done", flush=True)
"""


def _retries_property(n: int | str) -> dict[str, Any]:
    return {"properties": {"retries": {"section": "properties", "name": "retries", "value": str(n), "type": "int",
                                       "description": ""}}}


def _queue_retries(client: Any, n: int) -> None:
    queue = client.call("queues.get_all", {"name": "^default$"})["queues"][0]["id"]
    client.call("queues.update", {"queue": queue, "metadata": {
        "retries": {"key": "retries", "type": "int", "value": str(n)}}})


def _conveyor(server: ServerProcess, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "conveyor", *args], env=server.env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _show(server: ServerProcess, task: str) -> str:
    return _conveyor(server, "task", "show", task)


def test_task_failures_are_never_retried_and_infrastructure_ones_until_the_limit(
        sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """The queue allows 2 retries. A script that exits 1, a diff that does not apply and a branch that does not
    exist fail once (class `task`); a clone of an unreachable repository is tried 3 times (class `infrastructure`),
    then fails for good with each attempt recorded."""
    client = sqlite_server.client()
    _queue_retries(client, 2)
    crash = create_task(client, repository="", diff="import sys\nprint('crashing')\nsys.exit(1)\n",
                        entry_point="crash.py")
    _, bare = make_repo(tmp_path / "repo", {"train.py": "print('hi')\n"})
    bad_diff = create_task(client, repository=f"file://{bare}", name="bad-diff",
                           diff="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-print('not this')\n+print('x')\n")
    no_branch = create_task(client, repository=f"file://{bare}", branch="never-pushed", name="no-branch")
    unreachable = create_task(client, repository=f"http://127.0.0.1:{free_port()}/nowhere.git", name="unreachable")
    worker = f"retrier-{os.getpid()}"
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default",
                           env=agent_env(sqlite_server, tmp_path / "agent", CLEARML_WORKER_ID=worker))
    try:
        for task in (crash, bad_diff, no_branch, unreachable):
            enqueue(client, task)
        doc = wait_final(client, crash, timeout=120)
        assert doc["status"] == "failed" and doc["status_reason"] == "worker execution exit code 1", doc
        assert doc["failure_class"] == "task"
        assert [(a["attempt"], a["failure_class"], a["retried"]) for a in doc["attempts"]] == [(1, "task", False)]
        assert [h["status"] for h in doc["status_history"]].count("in_progress") == 1, "a task failure was retried"
        assert "worker execution exit code 1 [task]" in _show(sqlite_server, crash)
        listed = _conveyor(sqlite_server, "task", "list")
        assert any(crash in line and "failed [task]" in line for line in listed.splitlines()), listed
        for task, words in ((bad_diff, "diff does not apply"), (no_branch, "Branch 'never-pushed' not found")):
            doc = wait_final(client, task, timeout=60)
            assert doc["status"] == "failed" and words in doc["status_reason"], doc["status_reason"]
            assert [(a["failure_class"], a["retried"]) for a in doc["attempts"]] == [("task", False)]

        deadline = time.time() + 120
        while True:  # wait_final would return at the first `failed`, which a retry follows
            doc = client.call("tasks.get_by_id", {"task": unreachable})["task"]
            if doc["status"] == "failed" and len(doc.get("attempts") or []) == 3:
                break
            assert time.time() < deadline, f"not failed 3 times: {doc['status']} {doc.get('attempts')}"
            time.sleep(0.1)
        assert doc["failure_class"] == "infrastructure"
        assert "not reachable" in doc["status_reason"], doc["status_reason"]
        attempts = doc["attempts"]
        assert [(a["attempt"], a["failure_class"], a["retried"]) for a in attempts] == [
            (1, "infrastructure", True), (2, "infrastructure", True), (3, "infrastructure", False)]
        assert all(a["worker"] == worker and "not reachable" in a["reason"] for a in attempts), attempts
        assert [h["status"] for h in doc["status_history"]].count("in_progress") == 3
        text = log_text(client, unreachable)
        assert "attempt 1 failed" in text and "retry 1 of 2" in text and "retry 2 of 2" in text, text
        assert "attempt 3 failed" in text and "2 retries used up" in text, text
        shown = _show(sqlite_server, unreachable)
        assert "[infrastructure]" in shown and "#3" in shown and shown.count("retried") == 2, shown
    finally:
        daemon.stop()


def test_a_lost_worker_is_retried_elsewhere_and_the_log_keeps_both_attempts(
        sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """A daemon and its executor SIGKILLed mid-run: the server's reaper fails the task (`worker lost`,
    infrastructure) and, its user property retries=1 allowing, puts it back at the front of its queue; another
    daemon runs it to completion. The log holds both runs and the line that marks the retry."""
    client = sqlite_server.client()
    marker = f"conveyor-retry-{os.getpid()}-{time.monotonic_ns()}"
    _, bare = make_repo(tmp_path / "repo", {"once.py": ONCE_HANGS})
    task = create_task(client, repository=f"file://{bare}", entry_point=f"once.py {marker} {tmp_path / 'ran-once'}",
                       hyperparams=_retries_property(1))
    fast = {"CLEARML_AGENT__AGENT__WORKER_TIMEOUT_SEC": "3", "CLEARML_AGENT__AGENT__STATUS_REPORT_INTERVAL_SEC": "1"}
    first_env = agent_env(sqlite_server, tmp_path / "a", CLEARML_WORKER_ID=f"lost-{marker[-6:]}", **fast)
    first = DaemonProcess(sqlite_server, tmp_path / "a", "--queue", "default", env=first_env)
    second = None
    try:
        enqueue(client, task)
        wait_for_line(client, task, "first run: hanging", timeout=120)
        executor = executor_of(first, task)
        first.proc.kill()
        executor.kill()
        first.proc.wait()
        for proc in processes_with(marker):
            proc.kill()
        second_env = agent_env(sqlite_server, tmp_path / "b", CLEARML_WORKER_ID=f"spare-{marker[-6:]}", **fast)
        second = DaemonProcess(sqlite_server, tmp_path / "b", "--queue", "default", env=second_env)
        deadline = time.time() + 120
        while (doc := client.call("tasks.get_by_id", {"task": task})["task"])["status"] != "completed":
            assert doc["status"] != "failed" or doc.get("attempts", [{}])[-1].get("retried"), doc["status_reason"]
            assert time.time() < deadline, f"not completed: {doc['status']} {doc.get('status_reason')}"
            time.sleep(0.1)
        assert [(a["attempt"], a["worker"], a["reason"], a["failure_class"], a["retried"]) for a in doc["attempts"]] \
            == [(1, first_env["CLEARML_WORKER_ID"], "worker lost", "infrastructure", True)]
        assert "failure_class" not in doc  # it completed: no failure to classify now
        text = log_text(client, task)
        assert f"run on {first_env['CLEARML_WORKER_ID']}" in text and "first run: hanging" in text, text
        assert f"attempt 1 failed on {first_env['CLEARML_WORKER_ID']}: worker lost [infrastructure]; retry 1 of 1" \
            in text, text
        assert f"run on {second_env['CLEARML_WORKER_ID']}" in text and "second run: done" in text, text
        assert text.index("first run: hanging") < text.index("retry 1 of 1") < text.index("second run: done")
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        if second is not None:
            second.stop()
        for proc in processes_with(marker):
            proc.kill()


def test_the_server_decides_retries_on_both_databases(server: ServerProcess) -> None:
    """As an agent calls it: an infrastructure failure goes back to the front of its queue while the queue's
    `retries` allow (one reported by the agent, one found by the reaper), a task failure never, a user's enqueue
    gives the retries back, and a `retries` that is not a number is said in the log instead of retried."""
    api = server.client()
    queue = api.call("queues.create", {"name": f"retrying-{time.monotonic_ns()}"})["id"]
    api.call("queues.update", {"queue": queue, "metadata": {"retries": {"key": "retries", "type": "int",
                                                                        "value": "1"}}})

    def task(**fields: Any) -> str:
        return api.call("tasks.create", {"name": "r", "type": "training", **fields})["id"]

    def run(worker: str) -> str:
        popped = api.call("queues.get_next_task", {"queue": queue})["entry"]["task"]
        api.call("tasks.started", {"task": popped, "force": True, "status_message": f"Changed by conveyor {worker}"})
        return popped

    def entries() -> list[str]:
        return [e["task"] for e in api.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]]

    first, second = task(), task()
    for t in (first, second):
        api.call("tasks.enqueue", {"task": t, "queue": queue})
    assert run("box:0") == first
    answer = api.call("tasks.failed", {"task": first, "status_reason": "container failed to start: disk full",
                                       "failure_class": "infrastructure",
                                       "status_message": "Changed by conveyor box:0"})
    assert answer["fields"]["status"] == "queued"
    assert entries() == [first, second], "not back at the front of its queue"

    api.call("workers.register", {"worker": "doomed:0", "queues": [queue], "timeout": 1})
    assert run("doomed:0") == first
    api.call("workers.status_report", {"worker": "doomed:0", "task": first, "machine_stats": None})
    deadline = time.time() + 15
    while (doc := api.call("tasks.get_by_id", {"task": first})["task"])["status"] != "failed":
        assert time.time() < deadline, f"the lost worker's task is {doc['status']}"
        time.sleep(0.1)
    assert doc["status_reason"] == "worker lost" and doc["failure_class"] == "infrastructure"
    assert [(a["attempt"], a["worker"], a["failure_class"], a["retried"]) for a in doc["attempts"]] == [
        (1, "box:0", "infrastructure", True), (2, "doomed:0", "infrastructure", False)]
    assert entries() == [second], "retried past its queue's limit"

    assert run("box:0") == second
    api.call("tasks.failed", {"task": second, "status_reason": "worker execution exit code 2"})
    doc = api.call("tasks.get_by_id", {"task": second})["task"]
    assert doc["status"] == "failed" and doc["failure_class"] == "task" and entries() == []

    api.call("tasks.enqueue", {"task": first, "queue": queue})  # the user's enqueue: its retry is back
    assert run("box:0") == first
    api.call("tasks.failed", {"task": first, "status_reason": "image pull failed", "failure_class": "infrastructure"})
    assert api.call("tasks.get_by_id", {"task": first})["task"]["status"] == "queued"

    api.call("queues.remove_task", {"queue": queue, "task": first})
    odd = task(hyperparams=_retries_property("many"))  # the task's property wins over its queue's metadata
    api.call("tasks.enqueue", {"task": odd, "queue": queue})
    assert run("box:0") == odd
    api.call("tasks.failed", {"task": odd, "status_reason": "node failure", "failure_class": "infrastructure"})
    assert api.call("tasks.get_by_id", {"task": odd})["task"]["status"] == "failed"
    text = "".join(e["msg"] for e in api.call("events.get_task_log", {"task": odd, "order": "asc"})["events"])
    assert "not retried: the task's user property properties/retries: 'many' is not a whole number" in text, text

    # bad input is a clear 400 that says what is wrong
    with pytest.raises(ApiCallError, match="metadata key 'retries': '-1' is not a whole number"):
        api.call("queues.update", {"queue": queue, "metadata": {"retries": {"key": "retries", "value": "-1"}}})
    with pytest.raises(ApiCallError, match="failure_class must be one of infrastructure, task, not 'flaky'"):
        api.call("tasks.failed", {"task": odd, "failure_class": "flaky", "force": True})


def test_a_retried_task_goes_to_another_worker_first(tmp_path: Path, db_url: str | None) -> None:
    """The worker a run failed on skips its retry for retry_elsewhere_sec (it takes the next entry instead), so that a
    broken machine does not burn the retries; another worker, or an anonymous pop (clearml-agent), takes it at once,
    and once the time is up the worker it failed on may too (a queue served by one worker still runs it)."""
    server = ServerProcess(tmp_path / "home", db=db_url,
                           extra_env={"CONVEYOR__SERVER__RETRY_ELSEWHERE_SEC": "3"}).start()
    try:
        api = server.client()
        queue = api.call("queues.create", {"name": "elsewhere"})["id"]
        api.call("queues.update", {"queue": queue, "metadata": {"retries": {"key": "retries", "value": "9"}}})
        first, second, third = (api.call("tasks.create", {"name": n, "type": "training"})["id"]
                                for n in ("first", "second", "third"))
        for t in (first, second, third):
            api.call("tasks.enqueue", {"task": t, "queue": queue})

        def pop(worker: str | None) -> str | None:
            body = {"queue": queue, **({"worker": worker} if worker else {})}
            return (api.call("queues.get_next_task", body).get("entry") or {}).get("task")

        def fail(task: str) -> None:  # as the daemon reports a run it could not start: naming no worker
            api.call("tasks.failed", {"task": task, "status_reason": "container failed to start",
                                      "failure_class": "infrastructure", "force": True})

        assert pop("box:0") == first
        fail(first)
        assert pop("box:0") == second  # the retry is at the front, but box:0 skips it
        assert pop("other:0") == first
        fail(first)
        assert pop("box:0") == first  # other:0 failed it this time: box:0 may take it
        fail(first)
        assert pop(None) == first  # an anonymous pop (clearml-agent) takes it at once
        api.call("tasks.started", {"task": first, "force": True})
        fail(first)  # no worker pulled that run by name: nobody skips the retry
        assert pop("box:0") == first
        fail(first)
        assert pop("box:0") == third
        assert pop("box:0") is None  # only the retry is left: box:0 waits it out
        # a lone worker's long-poll is woken when the hold ends (no enqueue wakes it), not at the end of its wait
        began = time.monotonic()
        got = api.call("queues.get_next_task", {"queue": queue, "worker": "box:0", "wait": 20}, timeout=30)
        assert got.get("entry", {}).get("task") == first and time.monotonic() - began < 4.5, got
        attempts = api.call("tasks.get_by_id", {"task": first})["task"]["attempts"]
        assert [a["worker"] for a in attempts] == ["box:0", "other:0", "box:0", None, "box:0"]
    finally:
        server.stop()


def test_an_entry_given_back_keeps_its_hold_and_its_age(db_url: str | None, tmp_path: Path) -> None:
    """A retry's entry popped by another worker whose answer reached nobody (its long-poll client left) goes back to
    the front as it was: still held back from the worker it failed on, for what is left of the hold."""
    store = Store(db_url or sqlite_url(tmp_path))
    store.migrate()
    try:
        with store.write() as conn:
            queue = queues.create(conn, "held", user="u", company="c", tags=[], system_tags=[])
            add_entry(conn, queue, "t1", front=True, avoid="box:0")  # the retry of a run that failed on box:0
        with store.write_statements() as conn:
            popped = deliveries.pop(conn, [queue], runner=None, worker="other:0", elsewhere_sec=30)
        assert popped is not None and popped.avoid == "box:0"
        with store.write() as conn:
            deliveries.give_back(conn, popped)
        with store.write_statements() as conn:
            assert deliveries.pop(conn, [queue], runner=None, worker="box:0", elsewhere_sec=30) is None
            again = deliveries.pop(conn, [queue], runner=None, worker="other:0", elsewhere_sec=30)
        assert again == popped  # the same entry: its task, queue, age and hold
    finally:
        store.dispose()


def test_a_retry_put_back_after_its_pop_keeps_its_hold(tmp_path: Path, db_url: str | None) -> None:
    """A retry's entry held back from the worker it failed on, popped by another worker that then puts it back (a
    daemon told to stop, as Conveyor's does: `queues.add_task` then `move_task_to_front`) or never starts it (the
    server's sweep of unacknowledged deliveries puts it back): either way it goes back held back from that worker
    still, at the front, for what is left of the hold."""
    server = ServerProcess(tmp_path / "home", db=db_url,
                           extra_env={"CONVEYOR__SERVER__RETRY_ELSEWHERE_SEC": "600",
                                      "CONVEYOR__SERVER__UNSTARTED_REQUEUE_SEC": "1"}).start()
    try:
        api = server.client()
        queue = api.call("queues.create", {"name": "put-back"})["id"]
        api.call("queues.update", {"queue": queue, "metadata": {"retries": {"key": "retries", "value": "9"}}})
        retried, later = (api.call("tasks.create", {"name": n, "type": "training"})["id"] for n in ("retried", "later"))
        for t in (retried, later):
            api.call("tasks.enqueue", {"task": t, "queue": queue})

        def pop(worker: str) -> str | None:
            return (api.call("queues.get_next_task", {"queue": queue, "worker": worker}).get("entry") or {}).get("task")

        def entries() -> list[str]:
            return [e["task"] for e in api.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]]

        assert pop("box:0") == retried
        api.call("tasks.failed", {"task": retried, "status_reason": "container failed to start",
                                  "failure_class": "infrastructure", "force": True})
        assert entries() == [retried, later]  # the retry, at the front, held back from box:0

        assert pop("other:0") == retried
        api.call("queues.add_task", {"queue": queue, "task": retried})  # other:0 stops and hands it back
        api.call("queues.move_task_to_front", {"queue": queue, "task": retried})
        assert entries() == [retried, later]
        assert pop("box:0") == later  # still held back from box:0: it takes the next entry
        api.call("tasks.started", {"task": later, "force": True})

        assert pop("other:0") == retried  # and this time other:0 dies before it starts it
        deadline = time.monotonic() + 20
        while entries() != [retried] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert entries() == [retried]  # the sweep put it back
        assert pop("box:0") is None  # still held back from box:0
        assert pop("third:0") == retried
    finally:
        server.stop()


def test_the_ui_shows_the_class_with_the_reason_and_the_attempts(ui: Any, sqlite_server: ServerProcess) -> None:  # noqa: F811
    """The task page's header: the reason with its class, and each failed attempt; the task list: the reason with
    its class."""
    api = sqlite_server.client()
    queue = api.call("queues.create", {"name": f"ui-retries-{time.monotonic_ns()}"})["id"]
    task = api.call("tasks.create", {"name": "twice", "type": "training", "hyperparams": _retries_property(1)})["id"]
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    for reason, cls in (("image pull failed", "infrastructure"), ("worker execution exit code 1", "task")):
        assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == task
        api.call("tasks.started", {"task": task, "force": True, "status_message": "Changed by conveyor box:0"})
        api.call("tasks.failed", {"task": task, "status_reason": reason, "failure_class": cls,
                                  "status_message": "Changed by conveyor box:0"})
    ui.goto(sqlite_server.url + f"/#/task/{task}")
    reason = ui.locator(".facts div.fact", has=ui.get_by_text("Status reason", exact=True)).locator("dd")
    reason.get_by_text("worker execution exit code 1 [task]", exact=True).wait_for()
    attempts = ui.locator(".facts div.fact", has_text="Failed attempts").inner_text()
    assert "#1 on box:0: image pull failed [infrastructure], retried" in attempts, attempts
    assert "#2 on box:0: worker execution exit code 1 [task]" in attempts, attempts
    ui.goto(sqlite_server.url + "/#/tasks")
    ui.locator("tr", has_text="twice").get_by_text("worker execution exit code 1 [task]").wait_for()


def test_an_install_failure_is_classed_by_what_the_installer_says(tmp_path: Path) -> None:
    """uv and pip, for real: an index that does not answer is the infrastructure's failure, a requirement that
    exists nowhere is the task's (pip says "no matching distribution" in both cases: its earlier lines decide)."""
    from conveyor.env.managers.base import EnvBuildError, installer_env, run_streamed

    bindir = Path(sys.executable).parent
    subprocess.run([bindir / "uv", "venv", "-q", tmp_path / "v"], check=True, env=installer_env())
    python, empty = tmp_path / "v" / "bin" / "python", tmp_path / "no-packages"
    empty.mkdir()
    down = f"http://127.0.0.1:{free_port()}/simple"
    uv = [bindir / "uv", "pip", "install", "--python", python]
    pip = [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--target", tmp_path / "t"]
    cases = [
        ([*uv, "--index-url", down, "conveyor-no-such-package"], "infrastructure"),
        ([*uv, "--no-index", "--find-links", empty, "conveyor-no-such-package"], "task"),
        ([*pip, "--index-url", down, "--retries", "1", "--timeout", "1", "conveyor-no-such-package"], "infrastructure"),
        ([*pip, "--no-index", "--find-links", empty, "conveyor-no-such-package"], "task"),
    ]
    for argv, expected in cases:
        with pytest.raises(EnvBuildError) as failed:
            run_streamed(argv, log=lambda _line: None, what="installing the requirements",
                         env=installer_env({"UV_HTTP_RETRIES": "0", "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
                                            "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}))
        assert failed.value.failure_class == expected, (argv, str(failed.value))


def test_the_daemon_that_released_a_retried_run_leaves_the_retry_alone(
        sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """Two daemons on one queue, a clone that cannot reach its host (infrastructure), 2 retries: the retry goes to the
    other daemon at once, while the first has not yet seen its executor end. The first must not fail the retry as
    an executor that "exited without reporting a final status": each attempt is a real clone failure."""
    client = sqlite_server.client()
    _queue_retries(client, 2)
    unreachable = create_task(client, repository=f"http://127.0.0.1:{free_port()}/nowhere.git", name="unreachable")
    daemons = [DaemonProcess(sqlite_server, tmp_path / name, "--queue", "default",
                             env=agent_env(sqlite_server, tmp_path / name, CLEARML_WORKER_ID=f"{name}-{os.getpid()}"))
               for name in ("left", "right")]
    try:
        enqueue(client, unreachable)
        deadline = time.time() + 120
        while True:
            doc = client.call("tasks.get_by_id", {"task": unreachable})["task"]
            attempts = doc.get("attempts") or []
            if doc["status"] == "failed" and not attempts[-1]["retried"]:
                break
            assert time.time() < deadline, f"not failed for good: {doc['status']} {attempts}"
            time.sleep(0.1)
        time.sleep(1.0)  # a late, wrong `failed` from a daemon would come now
        doc = client.call("tasks.get_by_id", {"task": unreachable})["task"]
        assert [(a["attempt"], a["retried"]) for a in doc["attempts"]] == [(1, True), (2, True), (3, False)], \
            [(a["attempt"], a["worker"], a["reason"]) for a in doc["attempts"]]
        reasons = [a["reason"][:60] + " ... " + a["reason"][-50:] for a in doc["attempts"]]
        assert all("not reachable" in a["reason"] for a in doc["attempts"]), "\n".join(reasons)
        assert [h["status"] for h in doc["status_history"]].count("in_progress") == 3
    finally:
        for daemon in daemons:
            daemon.stop()


def test_a_failure_resent_after_its_retry_was_queued_changes_nothing(sqlite_server: ServerProcess) -> None:
    """The client resends `tasks.failed` when its answer is lost (a read timeout, a 502): the resend reaches a task the
    first one already put back on its queue. It is answered as a no-op (updated 0), records no attempt and leaves the
    retry queued; once a runner pulled the retry, that runner's failure of it (a job that never started) counts."""
    api = sqlite_server.client()
    queue = api.call("queues.create", {"name": f"resent-{time.monotonic_ns()}"})["id"]
    api.call("queues.update", {"queue": queue, "metadata": {"retries": {"key": "retries", "type": "int",
                                                                        "value": "2"}}})
    task = api.call("tasks.create", {"name": "resent", "type": "training"})["id"]
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == task
    api.call("tasks.started", {"task": task, "force": True, "status_message": "Changed by conveyor box:0"})
    failed = {"task": task, "force": True, "status_reason": "container failed to start",
              "failure_class": "infrastructure", "status_message": "Changed by conveyor box:0"}
    assert api.call("tasks.failed", failed)["fields"]["status"] == "queued"
    resent = api.call("tasks.failed", failed)
    assert resent["updated"] == 0, resent
    doc = api.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "queued" and [a["attempt"] for a in doc["attempts"]] == [1], doc["attempts"]
    entries = api.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]
    assert [e["task"] for e in entries] == [task], "the resend took the retry off its queue"

    assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == task
    answer = api.call("tasks.failed", {"task": task, "force": True, "status_reason": "slurm job 3 ended before the "
                                       "task started", "failure_class": "infrastructure"})
    assert answer["updated"] == 1 and answer["fields"]["status"] == "queued", answer
    doc = api.call("tasks.get_by_id", {"task": task})["task"]
    assert [(a["attempt"], a["retried"]) for a in doc["attempts"]] == [(1, True), (2, True)], doc["attempts"]


def test_a_retry_clears_the_failed_runs_timeline(sqlite_server: ServerProcess) -> None:
    """The timeline the failed run sent with its failure is that run's: the retry starts without one, as after an
    enqueue; a failure that is not retried keeps it."""
    api = sqlite_server.client()
    queue = api.call("queues.create", {"name": f"timeline-{time.monotonic_ns()}"})["id"]
    task = api.call("tasks.create", {"name": "timed", "type": "training", "hyperparams": _retries_property(1)})["id"]
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    spans = {"worker": "box:0", "marks": [{"mark": "pulled", "time": "2026-01-01T00:00:00+00:00", "after_sec": None}],
             "durations": {"queued": 0.01}}
    for retried in (True, False):
        assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == task
        api.call("tasks.started", {"task": task, "force": True, "status_message": "Changed by conveyor box:0"})
        api.call("tasks.failed", {"task": task, "status_reason": "image pull failed", "failure_class": "infrastructure",
                                  "status_message": "Changed by conveyor box:0", "timeline": spans})
        doc = api.call("tasks.get_by_id", {"task": task})["task"]
        assert doc["status"] == ("queued" if retried else "failed"), doc["status"]
        assert ("timeline" not in doc or not doc["timeline"]) if retried else doc["timeline"]["durations"] == {
            "queued": 0.01}, doc.get("timeline")


def test_a_container_that_does_not_start_is_an_infrastructure_failure_and_retried(
        sqlite_server: ServerProcess) -> None:
    """`conveyor execute --docker` whose container could not start fails the task it runs (started by its daemon)
    as the infrastructure's failure, and the task's retries put it back at the front of its queue."""
    from conveyor.agent.container_execute import _fail

    api = sqlite_server.client()
    queue = api.call("queues.create", {"name": f"containers-{time.monotonic_ns()}"})["id"]
    task = api.call("tasks.create", {"name": "boxed", "type": "training", "hyperparams": _retries_property(1)})["id"]
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == task
    api.call("tasks.started", {"task": task, "force": True, "status_message": "pulled by agent"})
    _fail(api, task, "container failed to start: no space left on device", settle=True)
    doc = api.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "queued", (doc["status"], doc.get("status_reason"))
    assert [(a["attempt"], a["failure_class"], a["retried"]) for a in doc["attempts"]] == [
        (1, "infrastructure", True)]
    assert [e["task"] for e in api.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]] == [task]


def test_a_container_whose_set_up_fails_is_retried(sqlite_server: ServerProcess,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-up inside a started container (before the task's code) fails the task its daemon started as the
    infrastructure's failure: recorded as an attempt and retried, not taken back to `created` first."""
    from conveyor.agent.container_start import _fail
    from conveyor.config import load_config

    for key, value in sqlite_server.env().items():
        monkeypatch.setenv(key, value)
    api = sqlite_server.client()
    queue = api.call("queues.create", {"name": f"set-up-{time.monotonic_ns()}"})["id"]
    task = api.call("tasks.create", {"name": "set-up", "type": "training", "hyperparams": _retries_property(1)})["id"]
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == task
    api.call("tasks.started", {"task": task, "force": True, "status_message": "pulled by agent"})
    assert _fail(load_config(), ["execute", "--id", task], "the container has no python3") == 1
    doc = api.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "queued", (doc["status"], doc.get("status_reason"))
    assert [(a["attempt"], a["failure_class"], a["retried"]) for a in doc["attempts"]] == [
        (1, "infrastructure", True)]
