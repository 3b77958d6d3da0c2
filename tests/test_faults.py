"""Tasks that try to wedge the agent: bytes that are not text, output the server refuses, floods of output, process
trees that outlive their main process, crashed executors and daemons (issue: nothing stuck, nothing lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agentkit import DaemonProcess, agent_env, create_task, enqueue, log_text, make_repo, wait_final, wait_status
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


def leftovers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with_marker = any(marker in part for part in (proc.info["cmdline"] or []))
        if with_marker and proc.pid != os.getpid():
            found.append(proc)
    return found


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
        deadline = time.time() + 120
        while "flooding" not in log_text(client, task):
            assert time.time() < deadline, log_text(client, task)[-2000:]
            time.sleep(0.2)
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
        assert not leftovers(f"{marker}a"), "processes of the finished task are still running"
        assert "process(es) left running after the main process exited" in log_text(client, done)
        enqueue(client, aborted)
        wait_status(client, aborted, "in_progress")
        deadline = time.time() + 60
        while len(leftovers(f"{marker}b")) < 2 or "main done" not in log_text(client, aborted):
            assert time.time() < deadline, log_text(client, aborted)
            time.sleep(0.2)
        client.call("tasks.stop", {"task": aborted})
        doc = wait_final(client, aborted, timeout=30)
        assert doc["status"] == "stopped", doc.get("status_reason")
        assert not leftovers(f"{marker}b"), "processes of the aborted task are still running"
    finally:
        daemon.stop()
        for proc in leftovers(marker):
            proc.kill()
