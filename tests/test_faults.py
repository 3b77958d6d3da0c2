"""Tasks that try to wedge the agent: bytes that are not text, output the server refuses, floods of output, process
trees that outlive their main process, crashed executors and daemons (issue: nothing stuck, nothing lost)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
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
    wait_status,
)
from conftest import ServerProcess
from conveyor.agent.logs import LogShipper
from conveyor.client.errors import ApiCallError

GRACE = 3  # agent.kill_grace_sec in agent_env

BYTES = r"""
import sys
out = sys.stdout.buffer
out.write(b"before\x00after \xff\xfe end\n")
out.write("caf\u00e9 ok\n".encode())
out.flush()
"""
FLOOD = r"""
import sys
print("flooding", flush=True)
line = b"x" * 1000 + b"\n"
out = sys.stdout.buffer
while True:
    out.write(line * 64)
"""
# The main process exits at once; a setsid grandchild keeps the output pipe open, a double-forked one writes to
# /dev/null: both must end with the task.
LEFT_BEHIND = r"""
import os, subprocess, sys, time
marker = sys.argv[1]
subprocess.Popen(["setsid", "sh", "-c", f"echo holder started; sleep 600; : {marker}-holder"])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open(os.devnull, os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(fd, n)
        os.execvp("sh", ["sh", "-c", f"sleep 601; : {marker}-daemonized"])
    os._exit(0)
time.sleep(1)
print("main done", flush=True)
if len(sys.argv) > 2:
    time.sleep(600)
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _, bare = make_repo(tmp_path / "repos", {"bytes.py": BYTES, "flood.py": FLOOD, "left.py": LEFT_BEHIND})
    return bare


def test_any_bytes_reach_the_log_on_both_databases(server: ServerProcess, tmp_path: Path, repo: Path) -> None:
    """NUL and invalid UTF-8 once got a permanent 400 on PostgreSQL: the whole log was lost and the task ended 60 s
    late. Every byte is kept, as a visible escape where it is not text."""
    client = server.client()
    task = create_task(client, repository=f"file://{repo}", entry_point="bytes.py")
    daemon = DaemonProcess(server, tmp_path / "agent", "--queue", "default")
    try:
        enqueue(client, task)
        started = time.monotonic()
        doc = wait_final(client, task, timeout=120)
        took = time.monotonic() - started
    finally:
        daemon.stop()
    text = log_text(client, task)
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text}"
    assert "before\\x00after \\xff\\xfe end" in text and "café ok" in text
    assert "conveyor: python environment done" in text  # the agent's own lines are there too
    assert took < 30, f"the task took {took:.0f} s to end"


def test_sdk_log_with_nul_is_stored(server: ServerProcess) -> None:
    """A client other than our agent (the clearml SDK) sending a NUL gets its line stored, not a 400."""
    client = server.client()
    task = create_task(client, repository="", diff="print(1)\n")
    answer = client.call_lines("events.add_batch", [{"type": "log", "task": task, "level": "info",
                                                     "msg": "a\x00b", "timestamp": int(time.time() * 1000)}])
    assert answer["added"] == 1
    assert log_text(client, task) == "a\\x00b"


class RefusingSink:
    """The server side of the shipper: refuses (400) any batch holding a marker, as a server that finds it invalid
    for good; records what it took."""

    def __init__(self) -> None:
        self.taken: list[str] = []

    def call_lines(self, endpoint: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        if any("\u2603" in e["msg"] for e in events):
            raise ApiCallError(endpoint, 400, 12, "invalid event")
        self.taken.extend(e["msg"] for e in events)
        return {"added": len(events), "errors": 0}


def test_a_batch_refused_for_good_never_blocks_the_rest() -> None:
    sink = RefusingSink()
    shipper = LogShipper(sink, "t" * 32, "w", flush_interval=0.05)
    shipper.write("first\n")
    assert shipper.flush(5)
    shipper.write("snow \u2603 man\n")  # refused as it is: sent again as plain ASCII
    shipper.write("after\n")
    assert shipper.flush(5), "the refused batch held up the lines after it"
    assert shipper.close(5)
    text = "".join(sink.taken)
    assert "first\n" in text and "snow \\u2603 man\nafter\n" in text
    assert shipper.dropped_events == 0


def test_abort_is_honoured_under_a_flood_of_output(sqlite_server: ServerProcess, tmp_path: Path, repo: Path) -> None:
    """However much a task prints, an abort ends it within agent.kill_grace_sec + 1 s of being seen."""
    client = sqlite_server.client()
    task = create_task(client, repository=f"file://{repo}", entry_point="flood.py")
    env = agent_env(sqlite_server, tmp_path / "agent", CLEARML_AGENT__AGENT__LOG_BUFFER_MAX_BYTES=str(2 * 2**20))
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default", env=env)
    try:
        enqueue(client, task)
        wait_for_line(client, task, "flooding", timeout=120)
        time.sleep(2)  # the buffer is full now: the task's writes wait for the server
        client.call("tasks.stop", {"task": task})
        stopped = time.monotonic()
        doc = wait_final(client, task, timeout=60)
        took = time.monotonic() - stopped
    finally:
        daemon.stop()
    assert doc["status"] == "stopped", doc.get("status_reason")
    # seen within the abort poll (1 s), ended within the grace + 1 s, the final status sent after the last flush
    assert took < 1 + GRACE + 1 + 3, f"the abort took {took:.1f} s"


def test_the_task_ends_with_its_main_process_and_takes_its_tree_along(sqlite_server: ServerProcess, tmp_path: Path,
                                                                      repo: Path) -> None:
    """A setsid grandchild holding the output pipe once kept the task in_progress for ever; a double-forked one on
    /dev/null outlived it. The executor is the subreaper of the task's tree and ends what is left."""
    client = sqlite_server.client()
    marker = f"conveyor-left-{os.getpid()}-{time.monotonic_ns()}"
    done = create_task(client, repository=f"file://{repo}", entry_point=f"left.py {marker}a")
    aborted = create_task(client, repository=f"file://{repo}", entry_point=f"left.py {marker}b keep-running")
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default")
    try:
        enqueue(client, done)
        doc = wait_final(client, done, timeout=120)
        assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{log_text(client, done)}"
        assert "holder started" in log_text(client, done) and "main done" in log_text(client, done)
        assert not processes_with(f"{marker}a"), "processes of the finished task are still running"
        assert "process(es) left running after the main process exited" in log_text(client, done)
        enqueue(client, aborted)
        wait_status(client, aborted, "in_progress")
        deadline = time.time() + 60
        while len(processes_with(f"{marker}b")) < 2 or "main done" not in log_text(client, aborted):
            assert time.time() < deadline, log_text(client, aborted)
            time.sleep(0.2)
        client.call("tasks.stop", {"task": aborted})
        doc = wait_final(client, aborted, timeout=30)
        assert doc["status"] == "stopped", doc.get("status_reason")
        assert not processes_with(f"{marker}b"), "processes of the aborted task are still running"
    finally:
        daemon.stop()
        for proc in processes_with(marker):
            proc.kill()


STUBBORN = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
marker, done_file = sys.argv[1], sys.argv[2]
subprocess.Popen(["setsid", "sh", "-c", f"trap '' TERM; sleep 600; : {marker}-child"])
print("running", flush=True)
while not os.path.exists(done_file):
    time.sleep(0.2)
print("finished", flush=True)
"""


@pytest.fixture
def stubborn_repo(tmp_path: Path) -> Path:
    _, bare = make_repo(tmp_path / "stubborn", {"stubborn.py": STUBBORN}, name="stubborn")
    return bare


def test_a_killed_executor_leaves_nothing_running(sqlite_server: ServerProcess, tmp_path: Path,
                                                  stubborn_repo: Path) -> None:
    """A SIGKILLed `conveyor execute` once left the task's processes running while the task was `failed` and the
    daemon took new work: now its main process dies with it and the daemon (their subreaper) ends the rest."""
    client = sqlite_server.client()
    marker = f"conveyor-orphan-{os.getpid()}-{time.monotonic_ns()}"
    task = create_task(client, repository=f"file://{stubborn_repo}", entry_point=f"stubborn.py {marker} /nonexistent")
    after = create_task(client, repository="", diff="print('next task ran')\n", entry_point="next.py")
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default")
    try:
        enqueue(client, task)
        wait_for_line(client, task, "running")
        assert len(processes_with(marker)) == 2
        executor_of(daemon, task).kill()
        doc = wait_final(client, task, timeout=30)
        assert doc["status"] == "failed" and "executor exited with code -9" in doc["status_reason"], doc
        deadline = time.time() + GRACE + 5
        while processes_with(marker) and time.time() < deadline:
            time.sleep(0.1)
        assert not processes_with(marker), "the task's processes outlived its executor"
        enqueue(client, after)
        assert wait_final(client, after, timeout=120)["status"] == "completed"
    finally:
        daemon.stop()
        for proc in processes_with(marker):
            proc.kill()


def test_a_restarted_daemon_adopts_what_its_killed_predecessor_ran(sqlite_server: ServerProcess, tmp_path: Path,
                                                                   stubborn_repo: Path) -> None:
    """A SIGKILLed daemon's executor runs on; a daemon restarted with the same worker id once ran a second task
    beside it and reported the worker idle. Now it adopts the running task: no second task until it ends, and the
    worker shows the adopted task."""
    client = sqlite_server.client()
    marker = f"conveyor-adopt-{os.getpid()}-{time.monotonic_ns()}"
    done_file = tmp_path / "done"
    first = create_task(client, repository=f"file://{stubborn_repo}", entry_point=f"stubborn.py {marker} {done_file}")
    second = create_task(client, repository="", diff="print('second task ran')\n", entry_point="second.py")
    env = agent_env(sqlite_server, tmp_path / "agent", CLEARML_WORKER_ID=f"adopter-{marker[-8:]}")
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default", env=env)
    restarted = None
    try:
        enqueue(client, first)
        wait_for_line(client, first, "running")
        executor = executor_of(daemon, first)
        daemon.proc.kill()
        daemon.proc.wait()
        assert executor.is_running(), "the executor died with its daemon"
        restarted = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default", env=env)
        assert f"adopted task {first}" in restarted.output()
        enqueue(client, second)
        time.sleep(3)
        assert client.call("tasks.get_by_id", {"task": second})["task"]["status"] == "queued", \
            "a second task ran beside the adopted one"
        workers = {w["id"]: w for w in client.call("workers.get_all", {})["workers"]}
        assert (workers[env["CLEARML_WORKER_ID"]].get("task") or {}).get("id") == first, workers
        done_file.write_text("")
        assert wait_final(client, first, timeout=60)["status"] == "completed"
        assert wait_final(client, second, timeout=120)["status"] == "completed"
    finally:
        if restarted is not None:
            restarted.stop()
        done_file.write_text("")
        for proc in processes_with(marker):
            proc.kill()


def test_a_second_stop_ends_the_daemon_whatever_its_server_and_tasks_do(sqlite_server: ServerProcess, tmp_path: Path,
                                                                        stubborn_repo: Path) -> None:
    """A daemon whose server had gone and whose task ignored SIGTERM once ignored two SIGTERMs for minutes: now the
    second one ends it, its task's processes included, within agent.kill_grace_sec + 5 s."""
    client = sqlite_server.client()
    marker = f"conveyor-stop-{os.getpid()}-{time.monotonic_ns()}"
    task = create_task(client, repository=f"file://{stubborn_repo}", entry_point=f"stubborn.py {marker} /nonexistent")
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default")
    try:
        enqueue(client, task)
        wait_for_line(client, task, "running")
        sqlite_server.kill()  # the server is gone
        daemon.signal(signal.SIGTERM)
        time.sleep(0.5)
        daemon.signal(signal.SIGTERM)
        sent = time.monotonic()
        daemon.proc.wait(GRACE + 5 + 5)
        took = time.monotonic() - sent
        assert took <= GRACE + 5 + 1, f"the daemon took {took:.1f} s to stop"
        deadline = time.time() + 5
        while processes_with(marker) and time.time() < deadline:
            time.sleep(0.1)
        assert not processes_with(marker), "the task's processes outlived the daemon"
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        for proc in processes_with(marker):
            proc.kill()


SHOW_ENV = r"""
import json, os
from clearml import Task
task = Task.init(project_name="secrets", task_name="env", auto_connect_frameworks=False, auto_resource_monitoring=False)
task.get_logger().report_text("the SDK works with the task's token")
config = open(os.environ["CLEARML_CONFIG_FILE"]).read() if os.environ.get("CLEARML_CONFIG_FILE") else ""
print("ENV " + json.dumps({k: v for k, v in os.environ.items() if k.startswith(("CLEARML", "TRAINS"))}))
print("CONFIG " + config)
"""


def test_secrets_stay_out_of_logs_command_lines_and_the_task(tmp_path: Path) -> None:
    """A token in the repository URL was printed in the task log, `--git-pass` showed in `ps`, the agent's API
    secret and git password were exported into the task, and the first-start secret went to the server's log."""
    server = ServerProcess(tmp_path / "home").start()
    try:
        key, secret = server.credentials()
        assert secret not in server.output(), "the first-start secret reached the server's log file"
        assert key in server.output()
        _, bare = make_repo(tmp_path / "repos", {"show.py": SHOW_ENV})
        client = server.client()
        url = f"file://gituser:REPOTOKEN123@{bare}"
        task = create_task(client, repository=url, entry_point="show.py", requirements="clearml\n")
        env = agent_env(server, tmp_path / "agent")
        daemon = DaemonProcess(server, tmp_path / "agent", "--queue", "default", "--git-user", "gituser",
                               "--git-pass", "GITPASS456", env=env)
        try:
            cmdline = " ".join(psutil.Process(daemon.proc.pid).cmdline())
            assert "GITPASS456" not in cmdline and "--git-pass" not in cmdline, cmdline
            enqueue(client, task)
            doc = wait_final(client, task, timeout=300)
            text = log_text(client, task)
            assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text[-3000:]}"
        finally:
            daemon.stop()
        for where, what in (("task log", text), ("agent output", daemon.output())):
            for leaked in ("REPOTOKEN123", "GITPASS456", secret):
                assert leaked not in what, f"{leaked} in the {where}"
        task_env = json.loads(next(line[4:] for line in text.splitlines() if line.startswith("ENV ")))
        assert not {"CLEARML_API_SECRET_KEY", "CLEARML_API_ACCESS_KEY", "CLEARML_AGENT_GIT_PASS"} & set(task_env)
        assert task_env["CLEARML_AUTH_TOKEN"]
        assert "the SDK works with the task's token" in text  # Task.init and its report went through the token
        config = next(line[7:] for line in text.splitlines() if line.startswith("CONFIG "))
        assert server.url in config and secret not in config and "credentials" not in config
    finally:
        server.stop()
