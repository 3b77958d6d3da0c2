"""Helpers for the glue tests (Slurm, Kubernetes): glue processes that never outlive their test, tasks from git
repositories, and waiting on what a glue writes on a task (a job property, a status message)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentkit import DaemonProcess, create_task, make_repo
from conftest import ServerProcess

STARTED: list[DaemonProcess] = []


@pytest.fixture(autouse=True)
def no_glue_left() -> Iterator[None]:
    """A test that fails half-way leaves no glue behind (its jobs: the `slurm` and `namespace` fixtures end them)."""
    yield
    while STARTED:
        glue = STARTED.pop()
        if glue.proc.poll() is None:
            glue.proc.kill()
            glue.proc.wait()


def start(server: ServerProcess, root: Path, command: str, *args: str, env: dict[str, str],
          start_timeout: float = 30) -> DaemonProcess:
    glue = DaemonProcess(server, root, *args, env=env, command=command, start_timeout=start_timeout)
    STARTED.append(glue)
    return glue


def restart(glue: DaemonProcess, server: ServerProcess, root: Path, start_timeout: float = 30) -> DaemonProcess:
    """The same glue (command, arguments, environment, worker id) started again."""
    command, *args = glue.proc.args[3:]
    return start(server, root, command, *args, env=glue.env, start_timeout=start_timeout)


def task_in(server: ServerProcess, root: Path, queue: str, code: str, **fields: Any) -> str:
    """A task from a new git repository whose train.py is `code`, enqueued in `queue`."""
    _, bare = make_repo(root / f"repos-{time.monotonic_ns()}", {"train.py": code})
    client = server.client()
    task = create_task(client, repository=f"file://{bare}", **fields)
    queue_id = client.call("queues.get_all", {"name": f"^{queue}$"})["queues"][0]["id"]
    client.call("tasks.enqueue", {"task": task, "queue": queue_id})
    return task


def wait_task(client: Any, task: str, says: str, timeout: float) -> dict[str, Any]:
    """The task once its status message or reason holds `says`, or one of its user properties is named `says`."""
    deadline = time.time() + timeout
    while True:
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
        props = doc.get("hyperparams", {}).get("properties", {})
        if says in (doc.get("status_message") or "") or says in (doc.get("status_reason") or "") or says in props:
            return dict(doc)
        if time.time() > deadline:
            raise AssertionError(f"task {task} never said {says!r}: {doc['status']} "
                                 f"{doc.get('status_message')!r} {doc.get('status_reason')!r}")
        time.sleep(0.2)


def job_property(client: Any, task: str, name: str, timeout: float = 60) -> str:
    """The value of the user property a glue records its job in (`slurm-job-id`, `k8s-job`)."""
    return str(wait_task(client, task, name, timeout)["hyperparams"]["properties"][name]["value"])
