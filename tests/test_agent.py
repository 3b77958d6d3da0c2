"""The agent end to end: a real server, a real daemon process, real git repositories and real uv installs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agentkit import (
    DaemonProcess,
    agent_env,
    create_task,
    enqueue,
    git,
    log_text,
    make_repo,
    reference_agent,
    reference_agent_env,
    wait_final,
    wait_status,
)
from conftest import ServerProcess

TRAIN = """\
import sys
print("argv", sys.argv[1:])
import six
print("six", six.__version__)
for i in range(5):
    print("line", i)
"""


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    return make_repo(tmp_path / "repos", {"train.py": TRAIN, "requirements.txt": "six==1.16.0\n",
                                          "fail.py": "import sys\nprint('failing')\nsys.exit(3)\n"})


@pytest.fixture
def daemon(sqlite_server: ServerProcess, tmp_path: Path):  # noqa: ANN201
    proc = DaemonProcess(sqlite_server, tmp_path, "--queue", "default")
    yield proc
    proc.stop()


def test_task_runs_end_to_end(sqlite_server: ServerProcess, daemon: DaemonProcess, repo: tuple[Path, Path]) -> None:
    work, bare = repo
    client = sqlite_server.client()
    # An uncommitted change: the diff must reach the run.
    (work / "train.py").write_text(TRAIN + 'import os\nprint("from the diff", os.environ.get("FROM_SETUP"))\n')
    diff = git(work, "diff", "HEAD") + "\n"
    task = create_task(client, repository=f"file://{bare}", diff=diff, args={"lr": "0.1", "epochs": 3},
                       container={"image": "", "arguments": "", "setup_shell_script": "echo setup script ran\n"
                                  "export FROM_SETUP=exported-by-setup"})
    enqueue(client, task)
    doc = wait_final(client, task, timeout=180)
    text = log_text(client, task)
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text}"
    assert doc["status_reason"] == "worker execution done"
    assert "argv ['--lr', '0.1', '--epochs', '3']" in text
    assert "six 1.16.0" in text
    lines = [text.index(f"line {i}\n") for i in range(5)]
    assert lines == sorted(lines), "log lines arrived out of order"
    assert "from the diff exported-by-setup" in text  # the setup script's exports reach the task
    assert "the setup script set FROM_SETUP for the task" in text
    assert text.index("setup script ran") < text.index("conveyor: git checkout")
    for phase in ("git checkout", "python environment"):
        assert f"conveyor: {phase}" in text and "done in" in text
    # The commit was written back, and what was installed reported.
    assert len(doc["script"]["version_num"]) == 40
    assert any(line.lower().startswith("six==") for line in doc["script"]["requirements"]["pip"])
    assert doc["last_worker"] and doc["started"] and doc["completed"]


def test_agent_with_a_user_key_runs_another_users_task(sqlite_server: ServerProcess, repo: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """The agent machine has its own key, of a `user` (not an admin); it runs alice's task to the end: starting it,
    writing back the commit and the installed requirements, its log, its final status."""
    from conveyor.client import ApiClient

    _, bare = repo
    admin = sqlite_server.client()
    keys = {}
    for name in ("alice", "gpu-box"):
        admin.call("users.create", {"name": name, "role": "user"})
        keys[name] = admin.call("auth.create_credentials", {"user": name})["credentials"]
    box = keys["gpu-box"]
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default", env=agent_env(
        sqlite_server, tmp_path, CLEARML_API_ACCESS_KEY=box["access_key"], CLEARML_API_SECRET_KEY=box["secret_key"]))
    try:
        alice = ApiClient(sqlite_server.url, keys["alice"]["access_key"], keys["alice"]["secret_key"])
        task = create_task(alice, repository=f"file://{bare}", args={"lr": "0.1"})
        enqueue(alice, task)
        doc = wait_final(alice, task, timeout=180)
        text = log_text(alice, task)
        assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text}\n{daemon.output()}"
        assert "six 1.16.0" in text and "line 4" in text
        assert len(doc["script"]["version_num"]) == 40
        assert any(line.lower().startswith("six==") for line in doc["script"]["requirements"]["pip"])
        assert doc["last_worker"] and doc["user"] == alice.claims["identity"]["user"]
        used = {c["access_key"]: c["last_used"] for c in admin.call("auth.get_credentials")["credentials"]}
        assert used[box["access_key"]], "the agent did not log in with its own key"
    finally:
        daemon.stop()


def test_failures_have_clear_reasons_and_the_daemon_keeps_serving(
        sqlite_server: ServerProcess, daemon: DaemonProcess, repo: tuple[Path, Path], tmp_path: Path) -> None:
    _, bare = repo
    client = sqlite_server.client()
    cases = {
        "exit": (dict(repository=f"file://{bare}", entry_point="fail.py"), "exit code 3"),
        "repo": (dict(repository=f"file://{tmp_path}/no-such-repo.git"), "failed cloning repository"),
        "branch": (dict(repository=f"file://{bare}", branch="no-such-branch"), "no-such-branch"),
        "diff": (dict(repository=f"file://{bare}", diff="diff --git a/nofile.py b/nofile.py\n--- a/nofile.py\n"
                      "+++ b/nofile.py\n@@ -1 +1 @@\n-old\n+new\n"), "diff"),
        "requirement": (dict(repository=f"file://{bare}", requirements="conveyor-no-such-package-xyz==1.0\n"),
                        "conveyor-no-such-package-xyz"),
        "entry": (dict(repository=f"file://{bare}", entry_point="missing.py"), "missing.py"),
    }
    ids = {}
    for name, (fields, _) in cases.items():
        ids[name] = create_task(client, name=name, **fields)
        enqueue(client, ids[name])
    good = create_task(client, name="good", repository=f"file://{bare}")
    enqueue(client, good)
    for name, (_, expected) in cases.items():
        doc = wait_final(client, ids[name], timeout=180)
        assert doc["status"] == "failed", name
        assert expected in doc["status_reason"], f"{name}: {doc['status_reason']}"
        assert "Traceback" not in doc["status_reason"]
    assert wait_final(client, good, timeout=180)["status"] == "completed"


def test_abort_kills_the_whole_process_tree(sqlite_server: ServerProcess, daemon: DaemonProcess,
                                            tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f"""\
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open({str(pid_file)!r}, "w").write(str(g.pid))
time.sleep(600)
'''])
print("started", flush=True)
time.sleep(600)
"""
    work, bare = make_repo(tmp_path / "repos", {"train.py": script})
    client = sqlite_server.client()
    task = create_task(client, repository=f"file://{bare}")
    enqueue(client, task)
    wait_status(client, task, "in_progress")
    deadline = time.time() + 120
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, log_text(client, task)
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert psutil.pid_exists(grandchild)
    client.call("tasks.stop", {"task": task})
    doc = wait_final(client, task, timeout=30)
    assert doc["status"] == "stopped"
    assert doc["status_reason"] == "task was stopped by tasks.stop"
    deadline = time.time() + 10
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the grandchild survived the abort"
        time.sleep(0.1)


def _run_order(client, tasks: list[str]) -> list[str]:  # noqa: ANN001
    docs = [client.call("tasks.get_by_id", {"task": t})["task"] for t in tasks]
    return [d["name"] for d in sorted(docs, key=lambda d: d["started"])]


@pytest.mark.parametrize("fairness,long_poll", [(False, True), (True, True), (False, False), (True, False)])
def test_priority_and_fairness(sqlite_server: ServerProcess, tmp_path: Path, fairness: bool, long_poll: bool) -> None:
    """Both pull paths: the long-poll, and the polling a ClearML server (no long-poll) gets."""
    _, bare = make_repo(tmp_path / "repos", {"train.py": "print('hi')\n"})
    client = sqlite_server.client()
    for name in ("high", "low"):
        client.call("queues.create", {"name": name})
    tasks = []
    for i in range(3):
        for queue in ("high", "low"):
            task = create_task(client, name=f"{queue}{i}", repository=f"file://{bare}")
            enqueue(client, task, queue)
            tasks.append(task)
    args = ["--queue", "high", "low", "--polling-interval", "0.5"] + (["--order-fairness"] if fairness else [])
    env = agent_env(sqlite_server, tmp_path, CLEARML_AGENT__AGENT__LONG_POLL_SEC="10" if long_poll else "0")
    daemon = DaemonProcess(sqlite_server, tmp_path, *args, env=env)
    assert ("long-poll" in daemon.output()) == long_poll
    try:
        for task in tasks:
            assert wait_final(client, task, timeout=180)["status"] == "completed"
    finally:
        daemon.stop()
    order = _run_order(client, tasks)
    if fairness:
        assert order == ["high0", "low0", "high1", "low1", "high2", "low2"]
    else:
        assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]


def test_two_daemons_never_run_the_same_task(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    _, bare = make_repo(tmp_path / "repos", {"train.py": f"import os\nopen({str(runs)!r}, 'a').write("
                                                         "os.environ['CLEARML_TASK_ID'] + '\\n')\n"})
    client = sqlite_server.client()
    first = DaemonProcess(sqlite_server, tmp_path / "a", "--queue", "default")
    second = DaemonProcess(sqlite_server, tmp_path / "b", "--queue", "default")
    try:
        tasks = [create_task(client, name=f"t{i}", repository=f"file://{bare}") for i in range(8)]
        for task in tasks:
            enqueue(client, task)
        docs = [wait_final(client, task, timeout=180) for task in tasks]
    finally:
        first.stop()
        second.stop()
    assert all(d["status"] == "completed" for d in docs)
    ran = runs.read_text().split()
    assert sorted(ran) == sorted(tasks), "a task ran twice or not at all"
    assert len({d["last_worker"] for d in docs}) == 2, "only one daemon got work"


def test_server_restart_in_the_middle_of_a_task(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home").start()
    script = "import time\nfor i in range(60):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n"
    _, bare = make_repo(tmp_path / "repos", {"train.py": script})
    client = server.client()
    daemon = DaemonProcess(server, tmp_path, "--queue", "default")
    try:
        task = create_task(client, repository=f"file://{bare}")
        enqueue(client, task)
        wait_status(client, task, "in_progress")
        time.sleep(2.0)
        server.stop()
        time.sleep(1.5)
        server.start()
        doc = wait_final(client, task, timeout=120)
        assert doc["status"] == "completed", doc.get("status_reason")
        text = log_text(client, task)
        ticks = [line for line in text.splitlines() if line.startswith("tick ")]
        assert ticks == [f"tick {i}" for i in range(60)], "log lines were lost or duplicated"
    finally:
        daemon.stop()
        server.stop()


def test_drain_on_sigterm_then_stop_on_second(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    _, bare = make_repo(tmp_path / "repos", {"train.py": "import time\nprint('go', flush=True)\ntime.sleep(3)\n",
                                             "long.py": "import time\nprint('go', flush=True)\ntime.sleep(600)\n"})
    client = sqlite_server.client()
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default")
    short = create_task(client, repository=f"file://{bare}")
    enqueue(client, short)
    wait_status(client, short, "in_progress")
    waiting = create_task(client, name="waiting", repository=f"file://{bare}")
    daemon.signal(signal.SIGTERM)
    enqueue(client, waiting)
    assert daemon.proc.wait(60) == 0
    assert wait_final(client, short)["status"] == "completed"  # drained, not killed
    assert client.call("tasks.get_by_id", {"task": waiting})["task"]["status"] == "queued"  # not taken
    workers = [w["id"] for w in client.call("workers.get_all", {})["workers"]]
    assert not workers, "the daemon did not unregister"

    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default")
    long_task = create_task(client, name="long", repository=f"file://{bare}", entry_point="long.py")
    default = client.call("queues.get_all", {"name": "^default$"})["queues"][0]["id"]
    client.call("queues.clear_queue", {"queue": default})
    enqueue(client, long_task)
    wait_status(client, long_task, "in_progress")
    time.sleep(0.5)
    daemon.signal(signal.SIGTERM)
    time.sleep(0.5)
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(60) == 0
    doc = wait_final(client, long_task)
    assert doc["status"] == "stopped", doc["status_reason"]
    assert "agent shut down" in doc["status_reason"]


def test_sdk_task_create_runs_on_the_conveyor_agent(sqlite_server: ServerProcess, daemon: DaemonProcess,
                                                    repo: tuple[Path, Path]) -> None:
    """A task made by the real clearml SDK's Task.create: its diff injects Task.init, which attaches to the run."""
    _, bare = repo
    code = f"""
from clearml import Task
t = Task.create(project_name="sdk", task_name="from-sdk", repo="file://{bare}", branch="main", script="train.py",
                argparse_args=[("lr", "0.5")])
Task.enqueue(t, queue_name="default")
print(t.id)
"""
    out = subprocess.run([sys.executable, "-c", code], env=sqlite_server.env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    task = out.stdout.strip().splitlines()[-1]
    client = sqlite_server.client()
    doc = wait_final(client, task, timeout=300)
    text = log_text(client, task)
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text[-3000:]}"
    assert "line 4" in text


def test_real_clearml_agent_executes_a_conveyor_task(sqlite_server: ServerProcess, repo: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """The reference agent (from PyPI), stand-alone `execute`, against our server."""
    agent = reference_agent()
    _, bare = repo
    client = sqlite_server.client()
    task = create_task(client, repository=f"file://{bare}", entry_point="fail.py")
    task_ok = create_task(client, repository=f"file://{bare}", entry_point="train.py",
                          requirements="six==1.16.0\n")
    env = reference_agent_env(sqlite_server, tmp_path)
    for task_id, expected in ((task_ok, "completed"), (task, "failed")):
        subprocess.run([str(agent), "execute", "--id", task_id], env=env, capture_output=True, timeout=600)
        doc = client.call("tasks.get_by_id", {"task": task_id})["task"]
        assert doc["status"] == expected, \
            f"{doc['status']}: {doc.get('status_reason')}\n{log_text(client, task_id)[-2000:]}"
    assert "line 4" in log_text(client, task_ok)
