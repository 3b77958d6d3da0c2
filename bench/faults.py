"""Fault benchmark: delivery and task state under crashes, on SQLite and PostgreSQL.

    python bench/faults.py [--tasks 2000] [--consumers 16] [--db sqlite|postgresql|both] [--agent-tasks 6]

Per database, two parts:
1. Delivery: 16 consumers long-poll with a client timeout far below `wait` (they give up and reconnect), start
   each task they get (as an agent does), while a producer enqueues 2,000 tasks and the server is SIGKILLed and
   restarted twice. Counted: tasks started twice (duplicates), never started (losses), and each restart's outage.
2. Agents: a real daemon runs real tasks; one daemon is SIGKILLed mid-task and restarted (it adopts the task), one
   executor is SIGKILLed mid-task. Counted: tasks whose final status disagrees with what happened, processes of the
   tasks left running, and the time each fault took to show in the task's status.

Every count must be 0. The reference for the times is the agent's own abort poll (agent.abort_poll_interval_sec)
and the reference agent's 5 s poll, printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentkit import (  # noqa: E402
    DaemonProcess,
    agent_env,
    create_task,
    enqueue,
    executor_of,
    make_repo,
    processes_with,
    wait_for_line,
)
from conftest import ServerProcess, pg_database  # noqa: E402

WORK = r"""
import os, subprocess, sys, time
marker, done = sys.argv[1], sys.argv[2]
subprocess.Popen(["sh", "-c", f"sleep 600; : {marker}"])
print("working", flush=True)
while not os.path.exists(done):
    time.sleep(0.1)
print("done", flush=True)
"""


class Delivery:
    """Consumers that give up early, a producer, and server restarts; the counts at the end."""

    def __init__(self, server: ServerProcess, tasks: int, consumers: int):
        self.server = server
        self.count = tasks
        self.consumers = consumers
        self.started: dict[str, int] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.outages: list[float] = []

    def token(self) -> str:
        key, secret = self.server.credentials()
        while True:
            try:
                return httpx.get(f"{self.server.url}/auth.login", auth=(key, secret), timeout=5).json()["data"]["token"]
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.2)

    def consume(self, queue: str) -> None:
        headers = {"Authorization": f"Bearer {self.token()}"}
        while not self.done.is_set():
            try:
                with httpx.Client(timeout=httpx.Timeout(0.3, connect=2), headers=headers) as poll:
                    answer = poll.post(f"{self.server.url}/queues.get_next_task", json={"queue": queue, "wait": 5})
                entry = answer.json()["data"].get("entry")
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.05)  # gave up, or the server is down: poll again
                continue
            if not entry:
                continue
            while not self.done.is_set():
                try:
                    httpx.post(f"{self.server.url}/tasks.started", json={"task": entry["task"], "force": True},
                               headers=headers, timeout=5)
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            with self.lock:
                self.started[entry["task"]] = self.started.get(entry["task"], 0) + 1
                if len(self.started) >= self.count:
                    self.done.set()

    def restart_server(self) -> None:
        self.server.kill()
        down = time.monotonic()
        self.server.start()
        self.outages.append(time.monotonic() - down)

    def run(self) -> dict[str, Any]:
        client = self.server.client(max_retries=60, backoff_max=1.0)
        queue = client.call("queues.create", {"name": "faults"})["id"]
        tasks = [create_task(client, name=f"f{i}", repository="", diff="print(1)\n") for i in range(self.count)]
        threads = [threading.Thread(target=self.consume, args=(queue,), daemon=True) for _ in range(self.consumers)]
        for t in threads:
            t.start()
        kills = {self.count // 3, 2 * self.count // 3}
        began = time.monotonic()
        for i, task in enumerate(tasks):
            if i in kills:
                self.restart_server()
            for _ in range(60):  # an enqueue whose answer was lost in a kill may have landed: look before retrying
                try:
                    client.call("tasks.enqueue", {"task": task, "queue": queue})
                    break
                except Exception:
                    doc = client.call("tasks.get_all", {"id": [task], "only_fields": ["status"]})["tasks"]
                    if doc and doc[0]["status"] != "created":
                        break
                    time.sleep(0.2)
        deadline = time.monotonic() + 120  # unstarted deliveries come back after unstarted_requeue_sec
        while not self.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.done.set()
        took = time.monotonic() - began
        with self.lock:
            duplicates = sum(1 for n in self.started.values() if n > 1)
            lost = [t for t in tasks if t not in self.started]
        return {"tasks": self.count, "duplicates": duplicates, "lost": len(lost), "seconds": took,
                "outages": self.outages}


def seconds_until(client: Any, task: str, statuses: set[str], timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if client.call("tasks.get_by_id", {"task": task})["task"]["status"] in statuses:
            return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"task {task} never reached {statuses}")


def agents(server: ServerProcess, root: Path, rounds: int) -> dict[str, Any]:
    """Half the rounds SIGKILL the daemon mid-task and restart it; the other half SIGKILL the executor."""
    marker = f"conveyor-bench-faults-{os.getpid()}"
    _, bare = make_repo(root / "repos", {"work.py": WORK})
    client = server.client()
    env = agent_env(server, root / "agent", CLEARML_WORKER_ID=f"bench-faults-{os.getpid()}")
    daemon = DaemonProcess(server, root / "agent", "--queue", "default", env=env)
    disagree, times = 0, {"executor killed → failed": [], "daemon killed → adopted": []}
    try:
        for i in range(rounds):
            done = root / f"done-{i}"
            task = create_task(client, repository=f"file://{bare}", entry_point=f"work.py {marker}-{i} {done}")
            enqueue(client, task)
            wait_for_line(client, task, "working")
            if i % 2 == 0:
                executor_of(daemon, task).kill()
                times["executor killed → failed"].append(seconds_until(client, task, {"failed", "completed",
                                                                                  "stopped"}))
                disagree += client.call("tasks.get_by_id", {"task": task})["task"]["status"] != "failed"
            else:
                daemon.proc.kill()
                daemon.proc.wait()
                killed = time.monotonic()
                daemon = DaemonProcess(server, root / "agent", "--queue", "default", env=env)
                if f"adopted task {task}" not in daemon.output():
                    disagree += 1
                times["daemon killed → adopted"].append(time.monotonic() - killed)
                done.write_text("")
                seconds_until(client, task, {"failed", "completed", "stopped"})
                disagree += client.call("tasks.get_by_id", {"task": task})["task"]["status"] != "completed"
            time.sleep(1.0 + 3 + 1)  # the kill grace (agent_env: 3 s) for what is left to be ended
            left_now = processes_with(f"{marker}-{i}")
            if left_now:
                print(f"  round {i}: processes left: {len(left_now)}")
    finally:
        daemon.stop()
    left = processes_with(marker)
    for proc in left:
        proc.kill()
    return {"disagree": disagree, "left": len(left), "times": times}


def report(db: str, delivery: dict[str, Any], agent: dict[str, Any]) -> None:
    print(f"\n{db}:")
    print(f"  delivery: {delivery['tasks']} tasks in {delivery['seconds']:.0f} s with 2 server SIGKILLs "
          f"(restarts {', '.join(f'{o:.1f} s' for o in delivery['outages'])}): "
          f"duplicates {delivery['duplicates']}, lost {delivery['lost']}")
    print(f"  agents: status disagreeing with reality {agent['disagree']}, processes left over {agent['left']}")
    for name, values in agent["times"].items():
        if values:
            print(f"  {name}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f},"
                  f" n={len(values)}); reference: the abort poll 1.0 s, clearml-agent's poll 5 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--consumers", type=int, default=16)
    parser.add_argument("--agent-tasks", type=int, default=6)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    env = {"CONVEYOR__SERVER__UNSTARTED_REQUEUE_SEC": "3"}
    failures = 0
    for db in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        root = Path(tempfile.mkdtemp(prefix=f"conveyor-faults-{db}-"))
        with (pg_database() if db == "postgresql" else contextlib.nullcontext()) as url:
            server = ServerProcess(root / "home", db=url, extra_env=env).start()
            try:
                delivery = Delivery(server, args.tasks, args.consumers).run()
                agent = agents(server, root, args.agent_tasks)
            finally:
                server.stop()
        report(db, delivery, agent)
        failures += delivery["duplicates"] + delivery["lost"] + agent["disagree"] + agent["left"]
    print(f"\n{'all counts 0' if failures == 0 else f'{failures} faults counted'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
