"""Helpers for agent tests: real git repositories, a daemon process with its own caches, waiting on tasks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from conftest import ServerProcess
from conveyor.protocol.tags import ARGS_ON_COMMAND_LINE

GIT = ["git", "-c", "user.email=t@conveyor.test", "-c", "user.name=test", "-c", "init.defaultBranch=main"]
FINAL = {"completed", "failed", "stopped", "closed", "published"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, files: dict[str, str], name: str = "project") -> tuple[Path, Path]:
    """A working copy with one commit, pushed to a bare repository; returns (work, bare)."""
    bare = root / f"{name}.git"
    work = root / name
    subprocess.run([*GIT, "init", "--bare", "-q", str(bare)], check=True)
    work.mkdir(parents=True)
    git(work, "init", "-q")
    for rel, text in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    git(work, "remote", "add", "origin", f"file://{bare}")
    git(work, "push", "-q", "origin", "main")
    return work, bare


def agent_env(server: ServerProcess, root: Path, **extra: str) -> dict[str, str]:
    """The server's client environment plus private agent folders; the uv download cache is shared by all tests."""
    shared = Path(os.environ.get("CONVEYOR_TEST_UV_CACHE", "/tmp/conveyor-test-uv-cache"))
    env = server.env()
    env.update({
        # One agent folder per server home, as on one machine: daemons there take distinct slots and worker ids.
        "CONVEYOR_AGENT_DIR": str(server.home / "agent"),
        "CLEARML_AGENT__AGENT__VENVS_DIR": str(root / "venvs-builds"),
        "CLEARML_AGENT__AGENT__VENVS_CACHE__PATH": str(root / "venvs-cache"),
        "CLEARML_AGENT__AGENT__VCS_CACHE__PATH": str(root / "vcs-cache"),
        "CLEARML_AGENT__AGENT__KILL_GRACE_SEC": "3",
        "UV_CACHE_DIR": str(shared),
    })
    env.update(extra)
    return env


class DaemonProcess:
    def __init__(self, server: ServerProcess, root: Path, *args: str, env: dict[str, str] | None = None,
                 command: str = "daemon", start_timeout: float = 30):
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{command}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.env = env or agent_env(server, root)
        self.proc = subprocess.Popen([sys.executable, "-m", "conveyor", command, *args], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + start_timeout
        while "serving" not in self.output():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"daemon did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(30)
        return self.proc.returncode


def create_task(client: Any, *, name: str = "t", repository: str = "", entry_point: str = "train.py",
                branch: str = "main", diff: str = "", requirements: str | None = None, args: dict | None = None,
                **fields: Any) -> str:
    script: dict[str, Any] = {"repository": repository, "branch": branch, "entry_point": entry_point,
                              "working_dir": ".", "diff": diff}
    if requirements is not None:
        script["requirements"] = {"pip": requirements}
    hyper = {"Args": {k: {"section": "Args", "name": k, "value": str(v), "type": "", "description": ""}
                      for k, v in (args or {}).items()}} if args else {}
    if args:  # a script that reads its arguments from argv, as `conveyor task create --args` records it
        fields.setdefault("system_tags", [ARGS_ON_COMMAND_LINE])
    return client.call("tasks.create", {"name": name, "type": "training", "script": script, "hyperparams": hyper,
                                        **fields})["id"]


def enqueue(client: Any, task: str, queue: str = "default") -> None:
    queue_id = client.call("queues.get_all", {"name": f"^{queue}$"})["queues"][0]["id"]
    client.call("tasks.enqueue", {"task": task, "queue": queue_id})


def wait_final(client: Any, task: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
        if doc["status"] in FINAL:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"task {task} did not end within {timeout}s: {doc['status']} {doc.get('status_reason')}")


def wait_status(client: Any, task: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
        if doc["status"] == status:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"task {task} never reached {status}: {doc['status']} {doc.get('status_reason')}")


def log_text(client: Any, task: str) -> str:
    events = client.call("events.get_task_log", {"task": task, "order": "asc", "batch_size": 10000})["events"]
    return "".join(e["msg"] for e in events)


def reference_agent_env(server: ServerProcess, root: Path) -> dict[str, str]:
    """The environment of the real `clearml-agent` (from PyPI) on this server: its own clearml.conf with private
    folders, system site packages and no pip pin, as its docs set it up."""
    conf = server.config_file.read_text() + f"""
agent {{
  package_manager {{ system_site_packages: true, pip_version: "" }}
  disable_agent_update_check: true
  venvs_dir: "{root}/ref-venvs"
  vcs_cache {{ path: "{root}/ref-vcs" }}
  venvs_cache {{ path: "{root}/ref-venvs-cache" }}
}}
"""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ref.conf").write_text(conf)
    env = {**server.env(), "CLEARML_CONFIG_FILE": str(root / "ref.conf")}
    env.pop("VIRTUAL_ENV", None)
    return env


def reference_agent() -> Path:
    agent = Path(sys.executable).parent / "clearml-agent"
    if not agent.exists():
        raise AssertionError("clearml-agent is not installed: it is part of the test extras")
    return agent


def wait_for_line(client: Any, task: str, line: str, timeout: float = 180) -> None:
    """Until `line` is in the task's log; fails early when the task ended without it."""
    deadline = time.time() + timeout
    while line not in log_text(client, task):
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
        if doc["status"] not in ("created", "queued", "in_progress") or time.time() > deadline:
            raise AssertionError(f"{line!r} never appeared ({doc['status']}: {doc.get('status_reason')}):\n"
                                 f"{log_text(client, task)[-3000:]}")
        time.sleep(0.1)


def processes_with(marker: str) -> list[psutil.Process]:
    """The processes on this machine whose command line holds `marker` (a task's, by the marker it was given)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(marker in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def executor_of(daemon: DaemonProcess, task: str, timeout: float = 60) -> psutil.Process:
    """The `conveyor execute` process the daemon started for `task`: by its command line, or by the daemon's run record
    (a standby executor was started before its task was known)."""
    record = Path(daemon.env["CONVEYOR_AGENT_DIR"]) / "runs" / f"{task}.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        recorded = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            recorded = json.loads(record.read_text())["pid"]
        for child in psutil.Process(daemon.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if "execute" in child.cmdline() and (task in child.cmdline() or child.pid == recorded):
                    return child
        time.sleep(0.05)
    raise AssertionError(f"no executor of {task} under the daemon:\n{daemon.output()}")
