"""Working hours and forcing end to end ("Scheduling Working Hours" in ClearML's docs): a real server, a real daemon,
on the long-poll and on the polling path. A queue tag or a runtime property takes effect within about 2 s; the
schedule is read through the agent's clock override."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentkit import DaemonProcess, agent_env, create_task, enqueue, make_repo, wait_final
from conftest import ServerProcess
from conveyor.agent.schedule import FAKE_NOW_ENV
from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED

TAKES_EFFECT_SEC = 2.5  # "within 2 s", plus the time to see it


def start_daemon(server: ServerProcess, tmp_path: Path, long_poll: bool, *args: str, **env: str) -> DaemonProcess:
    environ = agent_env(server, tmp_path, CLEARML_AGENT__AGENT__LONG_POLL_SEC="10" if long_poll else "0", **env)
    daemon = DaemonProcess(server, tmp_path, "--queue", "default", "--polling-interval", "0.5", *args, env=environ)
    assert ("long-poll" in daemon.output()) == long_poll
    return daemon


def new_task(server: ServerProcess, tmp_path: Path) -> str:
    _, bare = make_repo(tmp_path / f"repos-{time.monotonic_ns()}", {"train.py": "print('hi')\n"})
    return create_task(server.client(), repository=f"file://{bare}")


def worker(client: Any) -> dict[str, Any]:
    workers = client.call("workers.get_all", {})["workers"]
    assert len(workers) == 1, workers
    return dict(workers[0])


def stays_queued(client: Any, task: str, seconds: float = 3.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "queued"
        time.sleep(0.2)


def seconds_to_start(client: Any, task: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "queued":
        assert time.monotonic() - start < timeout, "the task was never pulled"
        time.sleep(0.05)
    return time.monotonic() - start


def wait_state(client: Any, state: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.time() + timeout
    while (found := worker(client)).get("state") != state:
        assert time.time() < deadline, f"the worker never reported {state}: {found}"
        time.sleep(0.1)
    return found


def default_queue(client: Any) -> str:
    return str(client.call("queues.get_default", {})["id"])


@pytest.mark.parametrize("long_poll", [True, False], ids=["long-poll", "polling"])
def test_a_queue_tagged_off_holds_its_tasks_until_tagged_on(sqlite_server: ServerProcess, tmp_path: Path,
                                                            long_poll: bool) -> None:
    client = sqlite_server.client()
    queue = default_queue(client)
    daemon = start_daemon(sqlite_server, tmp_path, long_poll)
    try:
        time.sleep(1)  # the daemon is waiting on the queue (in a long-poll, on that path)
        client.call("queues.update", {"queue": queue, "tags": [QUEUE_PAUSED]})
        found = wait_state(client, "forced_off", TAKES_EFFECT_SEC)
        assert found["state_reason"] == f"forced off by queue tag {QUEUE_PAUSED}"
        listed = subprocess.run([sys.executable, "-m", "conveyor", "worker", "list"], env=daemon.env,
                                capture_output=True, text=True).stdout
        assert f"forced off by queue tag {QUEUE_PAUSED}" in listed
        task = new_task(sqlite_server, tmp_path)
        enqueue(client, task)
        stays_queued(client, task)
        client.call("queues.update", {"queue": queue, "tags": [QUEUE_FORCED_ON]})
        assert seconds_to_start(client, task) < TAKES_EFFECT_SEC
        assert wait_final(client, task)["status"] == "completed"
    finally:
        daemon.stop()


def test_a_long_poll_on_queues_already_closed_to_its_worker_ends_within_a_second(server: ServerProcess) -> None:
    """A daemon that read its queue's tags just before they changed long-polls a queue now closed to it: no change
    will wake that wait, so it ends within a second and the daemon looks again (before, it learnt it was forced off
    only when its long-poll ran out). Every other long-poll keeps its whole wait."""
    client = server.client()
    queue = default_queue(client)
    client.call("queues.update", {"queue": queue, "tags": [QUEUE_PAUSED]})
    began = time.monotonic()
    assert client.call("queues.get_next_task", {"queue": queue, "worker": "vm:0", "wait": 20}, timeout=30) == {}
    assert time.monotonic() - began < 2.0
    client.call("queues.update", {"queue": queue, "tags": []})
    began = time.monotonic()
    assert client.call("queues.get_next_task", {"queue": queue, "worker": "vm:0", "wait": 3}, timeout=30) == {}
    assert time.monotonic() - began >= 2.9  # an open queue with nothing in it: the wait runs its course


@pytest.mark.parametrize("long_poll", [True, False], ids=["long-poll", "polling"])
def test_forced_off_by_runtime_property_resumes_after_its_expiry(sqlite_server: ServerProcess, tmp_path: Path,
                                                                long_poll: bool) -> None:
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, long_poll)
    try:
        time.sleep(1)
        worker_id = worker(client)["id"]
        key, secret = sqlite_server.credentials()
        # The docs' command, as they print it (expiry in seconds).
        body = {"worker": worker_id, "runtime_properties": [{"key": "force", "value": "off", "expiry": 6}]}
        subprocess.run(["curl", "-s", "--fail", "--user", f"{key}:{secret}", "--header",
                        "Content-Type: application/json", "--data", json.dumps(body),
                        f"{sqlite_server.url}/workers.set_runtime_properties"], check=True, capture_output=True)
        found = wait_state(client, "forced_off", TAKES_EFFECT_SEC)
        assert found["state_reason"].startswith("forced off until ")
        task = new_task(sqlite_server, tmp_path)
        enqueue(client, task)
        stays_queued(client, task, 2.0)
        assert seconds_to_start(client, task) < 6 + TAKES_EFFECT_SEC
        assert wait_final(client, task)["status"] == "completed"
    finally:
        daemon.stop()


def test_expiry_zero_deletes_a_runtime_property(sqlite_server: ServerProcess) -> None:
    client = sqlite_server.client()
    set_props = "workers.set_runtime_properties"
    client.call(set_props, {"worker": "w", "runtime_properties": [{"key": "force", "value": "off"}]})
    assert client.call("workers.get_runtime_properties", {"worker": "w"})["runtime_properties"] == [
        {"key": "force", "value": "off"}]
    client.call(set_props, {"worker": "w", "runtime_properties": [{"key": "force", "value": "off", "expiry": 0}]})
    assert client.call("workers.get_runtime_properties", {"worker": "w"})["runtime_properties"] == []


@pytest.mark.parametrize("long_poll", [True, False], ids=["long-poll", "polling"])
def test_outside_its_uptime_the_daemon_idles_unless_a_queue_forces_it_on(sqlite_server: ServerProcess,
                                                                         tmp_path: Path, long_poll: bool) -> None:
    client = sqlite_server.client()
    queue = default_queue(client)
    # A Sunday at 14:05, by the agent's clock; it works Sunday evenings.
    daemon = start_daemon(sqlite_server, tmp_path, long_poll, "--uptime", "20-23 SUN",
                          **{FAKE_NOW_ENV: "2026-11-29T14:05:00"})
    try:
        found = wait_state(client, "idle_by_schedule")
        assert found["state_reason"] == "idle by schedule until 20:00"
        task = new_task(sqlite_server, tmp_path)
        enqueue(client, task)
        stays_queued(client, task)
        status = subprocess.run([sys.executable, "-m", "conveyor", "daemon", "--status"], env=daemon.env,
                                capture_output=True, text=True).stdout
        assert "schedule: uptime 20-23 SUN;  state: idle by schedule (idle by schedule until 20:00)" in status
        client.call("queues.update", {"queue": queue, "tags": [QUEUE_FORCED_ON]})
        assert seconds_to_start(client, task) < TAKES_EFFECT_SEC
        assert wait_final(client, task)["status"] == "completed"
    finally:
        daemon.stop()


def test_in_its_uptime_the_daemon_pulls(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, True, "--uptime", "20-23 SUN",
                          **{FAKE_NOW_ENV: "2026-11-29T21:00:00"})
    try:
        task = new_task(sqlite_server, tmp_path)
        enqueue(client, task)
        assert wait_final(client, task)["status"] == "completed"
        assert worker(client)["state"] == "active"
    finally:
        daemon.stop()


@pytest.mark.parametrize("downtime_in", ["flag", "config"])
def test_both_an_uptime_and_a_downtime_stop_the_daemon_at_start(sqlite_server: ServerProcess, tmp_path: Path,
                                                                downtime_in: str) -> None:
    args, env = ["--uptime", "20-23 SUN"], agent_env(sqlite_server, tmp_path)
    if downtime_in == "flag":
        args += ["--downtime", "00-08 MON"]
    else:
        env["CLEARML_AGENT__AGENT__DOWNTIME"] = "00-08 MON"  # agent.downtime
    result = subprocess.run([sys.executable, "-m", "conveyor", "daemon", *args], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "Both an uptime and a downtime are set" in result.stderr and "Traceback" not in result.stderr


def test_a_malformed_span_is_named(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "conveyor", "daemon", "--uptime", "20-23 SUNDAY"],
                            env=agent_env(sqlite_server, tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert '"20-23 SUNDAY"' in result.stderr and "is not a day" in result.stderr and "Traceback" not in result.stderr
