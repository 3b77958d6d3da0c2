"""The management command line end to end: the real `conveyor` command as a subprocess against a running server
(SQLite and PostgreSQL), with real git repositories made in tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _api import module_server
from conftest import ServerProcess, free_port
from conveyor.client import ApiClient, AuthError
from conveyor.protocol.tags import ARGS_ON_COMMAND_LINE

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


# --- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cli_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per database for the whole module: every test uses names of its own, so they do not interfere."""
    with module_server(request.param, tmp_path_factory.mktemp(f"cli-{request.param}") / "home") as proc:
        yield proc


@pytest.fixture
def api(cli_server: ServerProcess) -> Iterator[ApiClient]:
    with cli_server.client() as client:
        yield client


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=t", *args], cwd=cwd, check=True,
                            capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A working copy with an origin (a bare repo), pushed, then a modified file, a staged new file and an
    untracked file."""
    origin = tmp_path / "origin.git"
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "train.py").write_text("print('v1')\n")
    (work / "src").mkdir()
    (work / "src" / "job.py").write_text("print('job')\n")
    (work / "requirements.txt").write_text("numpy==1.26.4\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "first")
    git(work, "remote", "add", "origin", str(origin))
    git(work, "push", "-q", "-u", "origin", "main")
    (work / "train.py").write_text("print('v2')\n")
    (work / "helper.py").write_text("X = 1\n")
    git(work, "add", "helper.py")
    (work / "notes.txt").write_text("not tracked\n")
    return work


def conveyor(server: ServerProcess, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, capture_output=True, text=True,
                            env={**server.env(), **GIT_ENV, **(env or {})}, timeout=60)
    assert result.returncode == expect, (f"conveyor {' '.join(args)}: rc {result.returncode}\n"
                                         f"{result.stdout}\n{result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def get_task(api: ApiClient, task_id: str) -> dict[str, Any]:
    return api.call("tasks.get_by_id", {"task": task_id})["task"]


def make_queue(server: ServerProcess, prefix: str = "q") -> str:
    name = unique(prefix)
    conveyor(server, "queue", "create", name)
    return name


def create_task(server: ServerProcess, repo: Path, *extra: str, name: str = "t") -> str:
    out = conveyor(server, "task", "create", "--name", name, "--repo", ".", "--script", "train.py", *extra, cwd=repo)
    return out.stdout.strip()


# --- task create ------------------------------------------------------------------------------------------------
def test_create_records_the_local_repository(cli_server: ServerProcess, api: ApiClient, repo: Path) -> None:
    queue = make_queue(cli_server, "gpu")
    project = unique("Vision/mnist (v1)")  # regex characters: the project look-up must escape them
    (repo.parent / "reqs.txt").write_text("torch>=2\nnumpy\n")
    (repo.parent / "setup.sh").write_text("apt-get install -y libgl1\n")
    result = conveyor(cli_server, "task", "create", "--name", "mnist", "--repo", ".", "--script", "train.py",
                      "--args", "lr=0.1", "--args", "b=2", "expr=a=b", "--queue", queue, "--project", project,
                      "--requirements", str(repo.parent / "reqs.txt"), "--docker", "python:3.11",
                      "--docker-args=--ipc=host -e A=1", "--docker-bash-setup-script", str(repo.parent / "setup.sh"),
                      "--type", "testing", "--binary", "python3.11", cwd=repo)
    task_id = result.stdout.strip()
    assert len(task_id) == 32
    assert "notes.txt" in result.stderr and "untracked" in result.stderr  # warned, and not recorded
    task = get_task(api, task_id)
    script = task["script"]
    assert script["repository"] == (repo.parent / "origin.git").resolve().as_uri()
    assert script["branch"] == "main"
    assert script["version_num"] == git(repo, "rev-parse", "HEAD")
    assert script["entry_point"] == "train.py" and script["working_dir"] == "."
    assert script["binary"] == "python3.11"
    assert script["diff"] == git(repo, "diff", "--binary", "HEAD") + "\n"
    assert "+print('v2')" in script["diff"] and "b/helper.py" in script["diff"] and "notes.txt" not in script["diff"]
    assert script["requirements"] == {"pip": "torch>=2\nnumpy\n"}
    assert task["hyperparams"] == {"Args": {
        "lr": {"section": "Args", "name": "lr", "value": "0.1", "type": "", "description": ""},
        "b": {"section": "Args", "name": "b", "value": "2", "type": "", "description": ""},
        "expr": {"section": "Args", "name": "expr", "value": "a=b", "type": "", "description": ""}}}
    assert ARGS_ON_COMMAND_LINE in task["system_tags"]  # the agent puts them on the script's command line
    assert task["container"] == {"image": "python:3.11", "arguments": "--ipc=host -e A=1",
                                 "setup_shell_script": "apt-get install -y libgl1\n"}
    assert task["type"] == "testing"
    assert task["status"] == "queued"
    queues = api.call("queues.get_all", {"name": f"^{queue}$"})["queues"]
    assert task["execution"]["queue"] == queues[0]["id"]
    assert [e["task"] for e in queues[0]["entries"]] == [task_id]
    assert api.call("projects.get_by_id", {"project": task["project"]})["project"]["name"] == project
    # The same project name again finds the project instead of making a second one.
    again = create_task(cli_server, repo, "--project", project)
    assert get_task(api, again)["project"] == task["project"]


def test_create_working_dir_packages_and_repo_without_remote(cli_server: ServerProcess, api: ApiClient,
                                                            tmp_path: Path) -> None:
    work = tmp_path / "solo"
    git(tmp_path, "init", "-q", "-b", "dev", str(work))
    (work / "src").mkdir()
    (work / "src" / "job.py").write_text("print('job')\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "c")
    result = conveyor(cli_server, "task", "create", "--name", "job", "--repo", str(work), "--script", "src/job.py",
                      "--working-dir", "src", "--packages", "numpy", "torch>=2", "--json", cwd=tmp_path)
    answer = json.loads(result.stdout)
    script = answer["task"]["script"]
    assert answer["id"] == answer["task"]["id"] and answer["enqueued"] is None
    assert script["repository"] == work.resolve().as_uri()  # no remote: a local agent can still clone it
    assert "no remote" in result.stderr
    assert script["branch"] == "dev" and script["diff"] == ""
    assert script["working_dir"] == "src" and script["entry_point"] == "job.py"
    assert script["requirements"] == {"pip": "numpy\ntorch>=2\n"}
    assert answer["task"]["status"] == "created" and answer["task"]["hyperparams"] == {}


def test_create_from_a_remote_url(cli_server: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    result = conveyor(cli_server, "task", "create", "--name", "remote", "--repo",
                      "https://bob:s3cret@git.example.com/team/models.git", "--branch", "release",
                      "--script", "tools/train.py", "--args", "epochs=3", cwd=tmp_path)
    script = get_task(api, result.stdout.strip())["script"]
    assert script["repository"] == "https://git.example.com/team/models.git"  # no credentials in a task
    assert (script["branch"], script["version_num"], script["diff"]) == ("release", "", "")
    assert script["entry_point"] == "tools/train.py"
    result = conveyor(cli_server, "task", "create", "--name", "pinned", "--repo", "git@github.com:team/models.git",
                      "--commit", "0123abc", "--script", "train.py", cwd=tmp_path)
    script = get_task(api, result.stdout.strip())["script"]
    assert (script["repository"], script["branch"], script["version_num"]) == ("git@github.com:team/models.git", "",
                                                                               "0123abc")


def test_create_finds_the_code_as_clearml_task_does(sqlite_server_module: ServerProcess, repo: Path,
                                                    tmp_path: Path) -> None:
    server = sqlite_server_module
    with server.client() as api:
        # No --repo: the repository holding the script, which is a path from the current folder.
        out = conveyor(server, "task", "create", "--name", "n", "--script", "job.py", cwd=repo / "src")
        script = get_task(api, out.stdout.strip())["script"]
        assert script["entry_point"] == "src/job.py" and script["repository"].endswith("origin.git")
        # A module as the entry point.
        out = conveyor(server, "task", "create", "--name", "m", "--repo", ".", "--script", "-m pkg.main", cwd=repo)
        assert get_task(api, out.stdout.strip())["script"]["entry_point"] == "-m pkg.main"
        # A script outside any repository travels whole in `diff`.
        plain = tmp_path / "plain"
        plain.mkdir()
        (plain / "run.py").write_text("print('alone')\n")
        out = conveyor(server, "task", "create", "--name", "s", "--script", "run.py", cwd=plain)
        script = get_task(api, out.stdout.strip())["script"]
        assert (script["repository"], script["entry_point"], script["diff"]) == ("", "run.py", "print('alone')\n")
        assert "not in a git repository" in out.stderr
        # A commit the remote does not have cannot be checked out by an agent: say so.
        git(repo, "commit", "-q", "-am", "local only")
        out = conveyor(server, "task", "create", "--name", "u", "--repo", ".", "--script", "train.py", cwd=repo)
        assert "is not on any branch of origin" in out.stderr


# --- queues -----------------------------------------------------------------------------------------------------
def test_queue_create_list_delete(cli_server: ServerProcess, api: ApiClient, repo: Path) -> None:
    name = unique("cpu")
    queue_id = conveyor(cli_server, "queue", "create", name, "--tags", "small", "fast").stdout.strip()
    assert api.call("queues.get_by_id", {"queue": queue_id})["queue"]["tags"] == ["small", "fast"]
    create_task(cli_server, repo, "--queue", name)
    table = conveyor(cli_server, "queue", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "ENTRIES", "TAGS", "NOTE"]
    assert [name, queue_id, "1", "small", "fast"] in [line.split() for line in table]
    listed = json.loads(conveyor(cli_server, "queue", "list", "--json").stdout)
    assert len(next(q for q in listed["queues"] if q["id"] == queue_id)["entries"]) == 1

    error = conveyor(cli_server, "queue", "create", name, expect=2)
    assert "already exists" in error.stderr
    error = conveyor(cli_server, "queue", "delete", name, expect=2)
    assert "1 task(s) waiting" in error.stderr and "--force" in error.stderr
    conveyor(cli_server, "queue", "delete", name, "--force")
    assert not api.call("queues.get_all", {"id": [queue_id]})["queues"]
    other = make_queue(cli_server)
    other_id = api.call("queues.get_all", {"name": f"^{other}$"})["queues"][0]["id"]
    conveyor(cli_server, "queue", "delete", other_id)  # by id
    assert not api.call("queues.get_all", {"id": [other_id]})["queues"]


# --- task list, show, clone, enqueue, abort, reset, delete -------------------------------------------------------
def test_task_list_filters(cli_server: ServerProcess, api: ApiClient, repo: Path) -> None:
    project = unique("listing")
    queue = make_queue(cli_server)
    queued = create_task(cli_server, repo, "--project", project, "--queue", queue, name="alpha-1")
    draft = create_task(cli_server, repo, "--project", project, name="beta-1")

    def ids(*args: str) -> list[str]:
        data = json.loads(conveyor(cli_server, "task", "list", "--project", project, *args, "--json").stdout)
        return [t["id"] for t in data["tasks"]]

    assert ids() == [draft, queued]  # most recently updated first
    assert ids("--status", "queued") == [queued]
    assert ids("--status", "queued", "created") == [draft, queued]
    assert ids("--name", "^beta") == [draft]
    assert ids("--queue", queue) == [queued]
    assert ids("--limit", "1") == [draft]
    table = conveyor(cli_server, "task", "list", "--project", project).stdout.splitlines()
    assert table[0].split()[:5] == ["ID", "NAME", "STATUS", "PROJECT", "OWNER"]
    assert table[1].split()[:4] == [draft, "beta-1", "created", project]
    assert "Conveyor Admin" in table[1]  # the owner, by name
    assert table[2].split()[:4] == [queued, "alpha-1", "queued", project]


def test_task_show_clone_enqueue_abort_reset_delete(cli_server: ServerProcess, api: ApiClient, repo: Path) -> None:
    queue = make_queue(cli_server)
    task_id = create_task(cli_server, repo, "--args", "lr=0.1", "--queue", queue, "--packages", "numpy", name="life")
    shown = conveyor(cli_server, "task", "show", task_id).stdout
    for expected in ("life", "queued", "train.py", "main", git(repo, "rev-parse", "HEAD"), "lr=0.1", queue,
                     "numpy", "uncommitted", "Owner:        Conveyor Admin"):
        assert expected in shown, expected
    assert json.loads(conveyor(cli_server, "task", "show", task_id, "--json").stdout)["id"] == task_id

    assert "Stopped" in conveyor(cli_server, "task", "abort", task_id).stdout
    task = get_task(api, task_id)
    assert task["status"] == "stopped"
    assert not api.call("queues.get_all", {"name": f"^{queue}$"})["queues"][0]["entries"]

    conveyor(cli_server, "task", "reset", task_id)
    assert get_task(api, task_id)["status"] == "created"
    conveyor(cli_server, "task", "enqueue", task_id, "--queue", queue)
    assert get_task(api, task_id)["status"] == "queued"
    error = conveyor(cli_server, "task", "enqueue", task_id, "--queue", queue, expect=2)
    assert "already queued" in error.stderr

    clone_id = conveyor(cli_server, "task", "clone", task_id, "--name", "life-2", "--queue", queue).stdout.strip()
    clone = get_task(api, clone_id)
    assert clone["name"] == "life-2" and clone["status"] == "queued" and clone["parent"] == task_id
    assert clone["script"] == get_task(api, task_id)["script"] and clone["hyperparams"] == task["hyperparams"]

    api.call("tasks.started", {"task": clone_id, "force": True})
    error = conveyor(cli_server, "task", "delete", clone_id, expect=2)
    assert "running" in error.stderr and "--force" in error.stderr
    conveyor(cli_server, "task", "delete", clone_id, "--force")
    conveyor(cli_server, "task", "delete", task_id)
    assert not api.call("tasks.get_all", {"id": [task_id, clone_id]})["tasks"]


# --- logs -------------------------------------------------------------------------------------------------------
def add_logs(api: ApiClient, task_id: str, lines: list[str]) -> None:
    now = int(time.time() * 1000)
    api.call("events.add_batch", {"requests": [{"task": task_id, "type": "log", "msg": line, "timestamp": now + i}
                                               for i, line in enumerate(lines)]})


def test_task_logs_in_order(cli_server: ServerProcess, api: ApiClient, repo: Path) -> None:
    task_id = create_task(cli_server, repo, name="logs")
    lines = [f"line {i}" for i in range(1234)]  # more than one page of events.get_task_log
    add_logs(api, task_id, lines[:700])
    add_logs(api, task_id, lines[700:])
    assert conveyor(cli_server, "task", "logs", task_id).stdout.splitlines() == lines
    events = [json.loads(line) for line in conveyor(cli_server, "task", "logs", task_id, "--json").stdout.splitlines()]
    assert [e["msg"] for e in events] == lines


def test_task_logs_follow_ends_when_the_task_completes(sqlite_server_module: ServerProcess, repo: Path) -> None:
    server = sqlite_server_module
    task_id = create_task(server, repo, name="follow")
    with server.client() as api:
        api.call("tasks.started", {"task": task_id, "force": True})
        add_logs(api, task_id, ["first", "second"])
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "task", "logs", task_id, "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server.env())
        try:
            time.sleep(1.5)
            assert proc.poll() is None  # still following a running task
            add_logs(api, task_id, ["third"])
            time.sleep(0.8)
            add_logs(api, task_id, ["last words"])
            api.call("tasks.completed", {"task": task_id, "force": True})
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["first", "second", "third", "last words"]


def test_task_logs_follow_on_a_queued_task_names_its_queue_and_its_workers(cli_server: ServerProcess, api: ApiClient,
                                                                           repo: Path, tmp_path: Path) -> None:
    idle, served = make_queue(cli_server, "nobody"), make_queue(cli_server, "served")
    worker = unique("box") + ":0"
    api.call("workers.register", {"worker": worker, "timeout": 600, "queues": [
        api.call("queues.get_all", {"name": f"^{served}$"})["queues"][0]["id"]]})
    try:
        for queue, says in ((idle, "no worker serves it"), (served, f"served by {worker}")):
            task_id = create_task(cli_server, repo, "--queue", queue, name="waiting")
            err_path = tmp_path / f"follow-{queue}.err"
            with open(err_path, "w") as err:
                proc = subprocess.Popen([sys.executable, "-m", "conveyor", "task", "logs", task_id, "--follow"],
                                        stdout=subprocess.PIPE, stderr=err, text=True, env=cli_server.env())
            try:
                deadline = time.time() + 20
                while says not in err_path.read_text() and time.time() < deadline and proc.poll() is None:
                    time.sleep(0.1)
                message = err_path.read_text()
                assert says in message and queue in message, message
                time.sleep(1.0)
                assert proc.poll() is None, "it stopped following a task that waits"
                add_logs(api, task_id, ["picked up"])
                api.call("tasks.stop", {"task": task_id, "force": True})
                out, _ = proc.communicate(timeout=20)
            finally:
                proc.kill()
            assert proc.returncode == 0 and out.splitlines() == ["picked up"], (out, err_path.read_text())
    finally:
        api.call("workers.unregister", {"worker": worker, "queues": []})


@pytest.fixture(scope="module")
def sqlite_server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """For slow tests that need not run on both databases."""
    proc = ServerProcess(tmp_path_factory.mktemp("cli-slow") / "home").start()
    yield proc
    proc.stop()


# --- workers and credentials ------------------------------------------------------------------------------------
def test_worker_list(cli_server: ServerProcess, api: ApiClient, repo: Path) -> None:
    queue = make_queue(cli_server)
    queue_id = api.call("queues.get_all", {"name": f"^{queue}$"})["queues"][0]["id"]
    task_id = create_task(cli_server, repo, name="busy")
    worker = unique("box") + ":gpu0"
    api.call("workers.register", {"worker": worker, "queues": [queue_id], "timeout": 600})
    api.call("workers.status_report", {"worker": worker, "task": task_id, "queue": queue_id,
                                       "timestamp": int(time.time() * 1000)})
    table = conveyor(cli_server, "worker", "list").stdout.splitlines()
    assert table[0].split() == ["WORKER", "QUEUES", "TASK", "STATE", "LAST", "REPORT"]
    row = next(line for line in table if line.startswith(worker))
    assert queue in row and task_id in row and "(busy)" in row and "s ago" in row
    data = json.loads(conveyor(cli_server, "worker", "list", "--json").stdout)
    entry = next(w for w in data["workers"] if w["id"] == worker)
    assert entry["task"]["id"] == task_id and entry["queues"][0]["name"] == queue


def test_credentials_create_list_revoke(cli_server: ServerProcess) -> None:
    own_key, own_secret = cli_server.credentials()
    created = conveyor(cli_server, "credentials", "create", "--label", "ci runner").stdout
    fields = dict(line.split(": ", 1) for line in created.splitlines() if ": " in line)
    key, secret = fields["access_key"], fields["secret_key"]
    with ApiClient(cli_server.url, key, secret) as client:
        assert client.login()["identity"]  # the new key logs in

    listing = conveyor(cli_server, "credentials", "list").stdout
    assert key in listing and "ci runner" in listing and own_key in listing
    assert secret not in listing and own_secret not in listing
    data = json.loads(conveyor(cli_server, "credentials", "list", "--json").stdout)
    assert next(c for c in data["credentials"] if c["access_key"] == key)["label"] == "ci runner"
    assert all("secret_key" not in c for c in data["credentials"])

    error = conveyor(cli_server, "credentials", "revoke", own_key, expect=2)
    assert "--force" in error.stderr and own_secret not in error.stderr
    conveyor(cli_server, "credentials", "revoke", key)
    with ApiClient(cli_server.url, key, secret, max_retries=0) as client, pytest.raises(AuthError):
        client.login()
    # Revoked keys stay listed, with their state; --active leaves them out.
    rows = {line.split()[0]: line for line in conveyor(cli_server, "credentials", "list").stdout.splitlines()[1:]
            if line.strip() and not line.startswith("(")}
    assert "revoked" in rows[key] and "ci runner" in rows[key]
    assert rows[own_key].rstrip().endswith("active")
    assert key not in conveyor(cli_server, "credentials", "list", "--active").stdout
    data = json.loads(conveyor(cli_server, "credentials", "list", "--json").stdout)
    assert next(c for c in data["credentials"] if c["access_key"] == key)["revoked"]
    assert "No active credentials" in conveyor(cli_server, "credentials", "revoke", key, expect=2).stderr


def test_users_roles_and_their_credentials(cli_server: ServerProcess, api: ApiClient, repo: Path,
                                           tmp_path: Path) -> None:
    from conveyor.config import write_api_section

    name = unique("alice")
    user_id = conveyor(cli_server, "user", "create", name).stdout.strip()
    table = conveyor(cli_server, "user", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ID", "ROLE", "CREATED"]
    assert next(line for line in table if line.startswith(name)).split()[1:3] == [user_id, "user"]
    assert " admin " in next(line for line in table if " * " in line)  # the first-start admin is the caller
    created = conveyor(cli_server, "credentials", "create", "--user", name, "--label", "alice's laptop").stdout
    fields = dict(line.split(": ", 1) for line in created.splitlines() if ": " in line)
    row = next(line for line in conveyor(cli_server, "credentials", "list").stdout.splitlines()
               if line.startswith(fields["access_key"]))
    assert name in row.split() and "active" in row  # the admin lists everyone's keys, with whose they are

    # Alice, with her own clearml.conf: her tasks are hers; the admin's are not.
    conf = tmp_path / "alice.conf"
    write_api_section(conf, cli_server.url, cli_server.url, f"{cli_server.url}/files", fields["access_key"],
                      fields["secret_key"])
    as_alice = {"CLEARML_CONFIG_FILE": str(conf)}
    theirs = create_task(cli_server, repo, name="admins")
    mine = conveyor(cli_server, "task", "create", "--name", "hers", "--repo", ".", "--script", "train.py",
                    cwd=repo, env=as_alice).stdout.strip()
    assert get_task(api, mine)["user"] == user_id
    conveyor(cli_server, "task", "abort", mine, env=as_alice)
    error = conveyor(cli_server, "task", "abort", theirs, env=as_alice, expect=2).stderr.strip().splitlines()
    admin_name = api.call("users.get_current_user")["user"]["name"]
    assert error == [f"conveyor: task {theirs} belongs to {admin_name}; only its owner or an admin can abort it"]
    assert get_task(api, theirs)["status"] == "created"
    for args, message in ((["user", "create", unique("mallory")], "only an admin can create users"),
                          (["credentials", "create", "--user", "Conveyor Admin"],
                           "only an admin can create credentials"),
                          (["user", "create", name], "only an admin")):
        lines = conveyor(cli_server, *args, env=as_alice, expect=2).stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    own = [line.split()[0] for line in conveyor(cli_server, "credentials", "list", env=as_alice).stdout.splitlines()[1:]
           if line and not line.startswith("(")]
    assert own == [fields["access_key"]]
    duplicate = conveyor(cli_server, "user", "create", name.upper(), expect=2).stderr
    assert "already exists" in duplicate and " — " in duplicate
    assert "No user named" in conveyor(cli_server, "credentials", "create", "--user", "nobody-xyz", expect=2).stderr


# --- errors a user can cause ------------------------------------------------------------------------------------
def test_user_errors_are_one_clear_line(sqlite_server_module: ServerProcess, repo: Path, tmp_path: Path) -> None:
    server = sqlite_server_module
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("print(1)\n")
    missing_id = uuid.uuid4().hex
    cases: list[tuple[list[str], Path, str]] = [
        (["task", "create", "--name", "x", "--repo", ".", "--script", "train.py"], plain,
         "not inside a git working copy"),
        (["task", "create", "--name", "x", "--repo", ".", "--script", "nope.py"], repo, "nope.py: no such file"),
        (["task", "create", "--name", "x", "--repo", ".", "--script", "notes.txt"], repo, "not tracked by git"),
        (["task", "create", "--name", "x", "--repo", ".", "--script", "train.py", "--args", "lr"], repo,
         "'lr' is not name=value"),
        (["task", "create", "--name", "x", "--repo", ".", "--script", "train.py", "--queue", "no-such-queue"], repo,
         "No queue named 'no-such-queue'"),
        (["task", "create", "--name", "x", "--repo", ".", "--script", "train.py", "--branch", "b"], repo,
         "--branch/--commit go with --repo URL"),
        (["task", "create", "--name", "x", "--repo", ".", "--script", "train.py", "--requirements", "nope.txt"],
         repo, "--requirements nope.txt: no such file"),
        (["task", "show", missing_id], repo, f"No task with id '{missing_id}'"),
        (["task", "logs", missing_id], repo, "No task with id"),
        (["task", "abort", missing_id], repo, "No task with id"),
        (["task", "enqueue", missing_id, "--queue", "default"], repo, "No task with id"),
        (["task", "list", "--name", "("], repo, "is not a valid regex"),
        (["task", "list", "--project", "no-such-project"], repo, "No project named"),
        (["queue", "delete", "no-such-queue"], repo, "No queue named"),
    ]
    with server.client() as api:
        before = len(api.call("tasks.get_all", {})["tasks"])
    for args, cwd, message in cases:
        result = conveyor(server, *args, cwd=cwd, expect=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("conveyor: "), (args, result.stderr)
        assert " — " in lines[0], f"no advice on what to do: {lines[0]}"
    with server.client() as api:
        assert len(api.call("tasks.get_all", {})["tasks"]) == before  # no half-made task

    nowhere = {"CLEARML_API_HOST": f"http://127.0.0.1:{free_port()}", "CONVEYOR__CLIENT__MAX_RETRIES": "0"}
    unreachable = conveyor(server, "task", "list", env=nowhere, expect=2)
    assert "Cannot reach the Conveyor server" in unreachable.stderr
