"""The agent's command line: services mode, --detached/--status/--stop, `up`, `init`, `config`, bad configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentkit import DaemonProcess, agent_env, create_task, enqueue, make_repo, wait_final, wait_status
from conftest import ServerProcess, free_port
from conveyor.config import load_config


def conveyor(*args: str, env: dict[str, str], timeout: float = 60,
             stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, input=stdin)


def test_services_mode_runs_tasks_side_by_side(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    _, bare = make_repo(tmp_path / "repos", {"train.py": "import time\nprint('up', flush=True)\ntime.sleep(4)\n"})
    client = sqlite_server.client()
    client.call("queues.create", {"name": "services"})
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "services", "--services-mode", "2", "--cpu-only")
    try:
        tasks = [create_task(client, name=f"s{i}", repository=f"file://{bare}") for i in range(3)]
        for task in tasks:
            enqueue(client, task, "services")
        wait_status(client, tasks[0], "in_progress")
        wait_status(client, tasks[1], "in_progress")
        time.sleep(1.0)
        # At most two at once: the third waits in the queue while the first two run, each as its own sub-worker.
        assert client.call("tasks.get_by_id", {"task": tasks[2]})["task"]["status"] == "queued"
        workers = {w["id"]: w for w in client.call("workers.get_all", {})["workers"]}
        subs = [w for w in workers if ":service:" in w]
        assert len(subs) == 2
        assert {workers[w]["task"]["id"] for w in subs} == set(tasks[:2])
        docs = [wait_final(client, t, timeout=120) for t in tasks]
        assert [d["status"] for d in docs] == ["completed"] * 3
        assert docs[2]["started"] >= min(docs[0]["completed"], docs[1]["completed"])
    finally:
        daemon.stop()


def test_detached_status_and_stop(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    env = agent_env(sqlite_server, tmp_path)
    started = conveyor("daemon", "--queue", "default", "--detached", env=env)
    assert started.returncode == 0, started.stderr
    assert "started in the background" in started.stdout
    status = conveyor("daemon", "--status", env=env)
    assert "default" in status.stdout and "pid" in status.stdout
    client = sqlite_server.client()
    assert len(client.call("workers.get_all", {})["workers"]) == 1
    # The docs' form: the start command with --stop added stops the daemon that command started.
    stopped = conveyor("daemon", "--queue", "default", "--detached", "--stop", env=env, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert "no conveyor daemon" in conveyor("daemon", "--status", env=env).stdout
    assert client.call("workers.get_all", {})["workers"] == []


def test_unknown_queue_is_a_clear_error(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    out = conveyor("daemon", "--queue", "nope", env=agent_env(sqlite_server, tmp_path))
    assert out.returncode == 2
    assert 'Could not find queue "nope"' in out.stderr and "--create-queue" in out.stderr
    assert "Traceback" not in out.stderr


def test_up_runs_a_task_with_server_and_agent_in_one_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    server = ServerProcess(home, port=port)  # only for its environment and client helpers
    env = agent_env(server, tmp_path)
    env["CONVEYOR__SERVER__PORT"] = str(port)
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "up", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (home / "clearml.conf").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        _, bare = make_repo(tmp_path / "repos", {"train.py": "print('hello from up')\n"})
        client = server.client()
        while not client.call("workers.get_all", {})["workers"]:
            assert time.time() < deadline
            time.sleep(0.1)
        task = create_task(client, repository=f"file://{bare}")
        enqueue(client, task)
        assert wait_final(client, task, timeout=120)["status"] == "completed"
    finally:
        proc.send_signal(2)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "unregistered" in out


def test_init_writes_a_verified_config_and_never_overwrites(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    key, secret = sqlite_server.credentials()
    target = tmp_path / "new.conf"
    env = {**sqlite_server.env(), "CLEARML_CONFIG_FILE": str(target)}
    bad = conveyor("init", "--api-host", sqlite_server.url, "--access-key", key, "--secret-key", "wrong", env=env)
    assert bad.returncode == 2 and not target.exists()
    assert "wrong" not in bad.stderr
    ok = conveyor("init", "--api-host", sqlite_server.url, "--access-key", key, "--secret-key", secret,
                  "--git-user", "me", "--git-pass", "tok3n", env=env)
    assert ok.returncode == 0, ok.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert load_config(target, environ={}).get("agent.git_pass") == "tok3n"  # the flag is written, not asked for
    listed = conveyor("queue", "list", env=env)
    assert listed.returncode == 0 and "default" in listed.stdout
    again = conveyor("init", "--api-host", sqlite_server.url, "--access-key", key, "--secret-key", secret, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    shown = conveyor("config", env=env)
    assert shown.returncode == 0
    assert secret not in shown.stdout and "tok3n" not in shown.stdout
    assert re.search(r'git_user: "?me"?\n', shown.stdout), shown.stdout


def test_malformed_config_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("api {\n  api_server: \"http://x\"\n}\nagent {\n  kill_grace_sec: \"abc\"\n}\n")
    env = {**os.environ, "CLEARML_CONFIG_FILE": str(conf), "HOME": str(tmp_path)}
    out = conveyor("config", env=env)
    assert out.returncode == 2
    assert "bad.conf" in out.stderr and "line 5" in out.stderr and "agent.kill_grace_sec" in out.stderr
    conf.write_text("api {\n  api_server: \"http://x\"\n\nagent { \n")
    out = conveyor("config", env=env)
    assert out.returncode == 2 and "bad.conf" in out.stderr and "line" in out.stderr
    assert "Traceback" not in out.stderr
    # Dynamic overrides: path lower-cased, value parsed as JSON.
    conf.write_text("api { api_server: \"http://x\" }\n")
    env["CLEARML_AGENT__AGENT__PACKAGE_MANAGER__TYPE"] = "pip"
    out = conveyor("config", "--json", env=env)
    assert '"type": "pip"' in out.stdout


def test_execute_clone_runs_a_copy_and_leaves_the_original(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    _, bare = make_repo(tmp_path / "repos", {"train.py": "print('cloned run')\n"})
    client = sqlite_server.client()
    task = create_task(client, name="original", repository=f"file://{bare}")
    out = conveyor("execute", "--id", task, "--clone", env=agent_env(sqlite_server, tmp_path), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cloned run" in out.stdout
    assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "created"
    clones = client.call("tasks.get_all", {"parent": [task]})["tasks"]
    assert len(clones) == 1 and clones[0]["status"] == "completed" and clones[0]["name"] == "Clone of original"
    # The user learns which task holds this run (its id, said as such, not only inside a path).
    said = [line for line in out.stdout.splitlines() if line.startswith("conveyor:") and "clone" in line.lower()]
    assert said and clones[0]["id"] in said[0].split() and task in said[0], out.stdout
    workers = client.call("workers.get_all", {})["workers"]
    assert workers == [], "a stand-alone execute unregisters its worker at the end"


def test_gpu_daemon_identity_visibility_and_stats(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """Through the fake device inventory: worker id <host>:gpu0, the task sees only GPU 0, reports carry GPU stats."""
    fake = tmp_path / "gpus.json"
    fake.write_text('[{"index": 0, "uuid": "GPU-aaa", "memory_total_mb": 81920, "memory_used_mb": 1024, '
                    '"utilization": 42, "temperature": 55}, {"index": 1, "uuid": "GPU-bbb", "memory_total_mb": 81920, '
                    '"memory_used_mb": 0, "utilization": 7, "temperature": 40}]')
    script = "import os\nprint('visible', os.environ['CUDA_VISIBLE_DEVICES'])\n"
    _, bare = make_repo(tmp_path / "repos", {"train.py": script})
    client = sqlite_server.client()
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(fake),
                    CLEARML_AGENT__AGENT__STATUS_REPORT_INTERVAL_SEC="1")
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default", "--gpus", "0", env=env)
    try:
        duplicate = conveyor("daemon", "--queue", "default", "--gpus", "0", env=env)
        assert duplicate.returncode == 2 and "already runs here" in duplicate.stderr
        task = create_task(client, repository=f"file://{bare}")
        enqueue(client, task)
        doc = wait_final(client, task, timeout=120)
        assert doc["status"] == "completed"
        assert doc["last_worker"].endswith(":gpu0")
        from agentkit import log_text

        assert "visible 0\n" in log_text(client, task)
        deadline = time.time() + 10
        while True:
            stats = client.call("workers.get_all", {})["workers"][0].get("machine_stats") or {}
            if "gpu_usage" in stats or time.time() > deadline:
                break
            time.sleep(0.2)
        assert stats["gpu_usage"] == [42.0] and stats["gpu_memory_free"] == [80896.0]
    finally:
        daemon.stop()


def _fake_gpus(tmp_path: Path) -> Path:
    fake = tmp_path / "gpus.json"
    fake.write_text('[{"index": 0, "uuid": "GPU-aaa", "memory_total_mb": 81920}, '
                    '{"index": 1, "uuid": "GPU-bbb", "memory_total_mb": 81920}]')
    return fake


def test_stop_stops_only_the_daemon_started_with_the_same_arguments(sqlite_server: ServerProcess,
                                                                     tmp_path: Path) -> None:
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(_fake_gpus(tmp_path)))
    gpu0 = DaemonProcess(sqlite_server, tmp_path, "--queue", "default", "--gpus", "0", env=env)
    gpu1 = DaemonProcess(sqlite_server, tmp_path, "--queue", "default", "--gpus", "1", env=env)
    client = sqlite_server.client()
    try:
        # No daemon was started without arguments: nothing stops, and the answer names what runs and how to stop it.
        bare = conveyor("daemon", "--stop", env=env, timeout=90)
        assert bare.returncode == 2, bare.stdout + bare.stderr
        assert ":gpu0" in bare.stderr and ":gpu1" in bare.stderr and "--stop" in bare.stderr
        assert gpu0.proc.poll() is None and gpu1.proc.poll() is None
        same = conveyor("daemon", "--queue", "default", "--gpus", "0", "--detached", "--stop", env=env, timeout=90)
        assert same.returncode == 0, same.stdout + same.stderr
        assert ":gpu0" in same.stdout and ":gpu1" not in same.stdout
        assert gpu0.proc.wait(30) == 0
        assert gpu1.proc.poll() is None, "the daemon on GPU 1 was stopped too"
        assert [w["id"].rsplit(":", 1)[-1] for w in client.call("workers.get_all", {})["workers"]] == ["gpu1"]
        # A listed worker id stops that daemon, whatever its arguments.
        worker = client.call("workers.get_all", {})["workers"][0]["id"]
        named = conveyor("daemon", "--stop", worker, env=env, timeout=90)
        assert named.returncode == 0, named.stdout + named.stderr
        assert gpu1.proc.wait(30) == 0
    finally:
        gpu0.stop()
        gpu1.stop()


def test_daemon_stop_leaves_conveyor_up_running_until_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    server = ServerProcess(home, port=port)  # only for its environment and client helpers
    env = agent_env(server, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "up", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (home / "clearml.conf").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        client = server.client()
        while not client.call("workers.get_all", {})["workers"]:
            assert time.time() < deadline
            time.sleep(0.1)
        up_worker = client.call("workers.get_all", {})["workers"][0]["id"]
        stopped = conveyor("daemon", "--stop", env=env, timeout=90)
        assert stopped.returncode == 2, stopped.stdout + stopped.stderr
        assert up_worker in stopped.stderr  # named, with the way to stop it
        time.sleep(1.0)
        assert proc.poll() is None, "conveyor up was stopped"
        assert [w["id"] for w in client.call("workers.get_all", {})["workers"]] == [up_worker]
        named = conveyor("daemon", "--stop", up_worker, env=env, timeout=90)
        assert named.returncode == 0, named.stdout + named.stderr
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
        out, _ = proc.communicate(timeout=60)
    assert "unregistered" in out
    with pytest.raises(httpx.HTTPError):  # its server went with it
        httpx.get(f"http://127.0.0.1:{port}/debug.ping", timeout=2)


def _credentials_block(key: str, secret: str, api: str, web: str | None = None, files: str | None = None) -> str:
    """As a ClearML server's "Create new credentials" dialog shows it (hosts unquoted, keys quoted, `=`)."""
    hosts = (f"  web_server: {web}\n" if web else "") + f"  api_server: {api}\n" + (
        f"  files_server: {files}\n" if files else "")
    return (f"api {{\n{hosts}  credentials {{\n    \"access_key\" = \"{key}\",\n"
            f"    \"secret_key\" = \"{secret}\"\n  }}\n}}\n")


def test_init_takes_the_pasted_credentials_block_through_a_pipe(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    key, secret = sqlite_server.credentials()
    url = sqlite_server.url
    target = tmp_path / "pasted.conf"
    env = {**sqlite_server.env(), "CLEARML_CONFIG_FILE": str(target)}
    # The block at one prompt, then: web host and files host (the block's, by default), git user, git password,
    # extra index URL.
    answers = _credentials_block(key, secret, url, web=f"{url}/", files=f"{url}/files") + \
        "\n\nme\ntok3n\nhttps://packages.example.test/simple\n"
    out = conveyor("init", env=env, stdin=answers)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == "", out.stderr  # no GetPassWarning, no traceback
    for prompt in ("Paste", "Web", "Files", "Git user", "Git password", "extra index"):
        assert prompt.lower() in out.stdout.lower(), f"prompt {prompt!r} not shown:\n{out.stdout}"
    assert secret not in out.stdout and "tok3n" not in out.stdout
    assert "verified" in out.stdout.lower()
    cfg = load_config(target, environ={})
    assert (cfg.api_host, cfg.get("api.web_server"), cfg.get("api.files_server")) == (url, url, f"{url}/files")
    assert (cfg.access_key, cfg.secret_key) == (key, secret)
    assert cfg.get("agent.git_user") == "me" and cfg.get("agent.git_pass") == "tok3n"
    assert list(cfg.get("agent.package_manager.extra_index_url")) == ["https://packages.example.test/simple"]
    listed = conveyor("queue", "list", env=env)
    assert listed.returncode == 0 and "default" in listed.stdout, listed.stderr

    # Never over an existing file: refused before any question.
    written = target.read_text()
    again = conveyor("init", env=env, stdin=answers)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "paste" not in again.stdout.lower() and target.read_text() == written

    # A block with only the API host: the web and files hosts default to that server's own.
    other = tmp_path / "derived.conf"
    env["CLEARML_CONFIG_FILE"] = str(other)
    out = conveyor("init", env=env, stdin=_credentials_block(key, secret, url) + "\n\n\n\n\n")
    assert out.returncode == 0 and out.stderr == "", out.stdout + out.stderr
    cfg = load_config(other, environ={})
    assert (cfg.get("api.web_server"), cfg.get("api.files_server")) == (url, f"{url}/files")
    assert not cfg.get("agent.git_user", None) and not list(cfg.get("agent.package_manager.extra_index_url"))

    # Wrong secret: the login fails, nothing is written, the secret is not echoed.
    refused = tmp_path / "refused.conf"
    env["CLEARML_CONFIG_FILE"] = str(refused)
    out = conveyor("init", env=env, stdin=_credentials_block(key, "not-the-secret", url) + "\n" * 5)
    assert out.returncode == 2 and not refused.exists(), out.stdout + out.stderr
    assert "not-the-secret" not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_init_default_hosts_follow_clearml_naming() -> None:
    from conveyor.agent.setup import default_hosts

    assert default_hosts("https://api.clear.ml", conveyor=False) == ("https://app.clear.ml", "https://files.clear.ml")
    assert default_hosts("http://10.0.0.5:8008", conveyor=False) == ("http://10.0.0.5:8080", "http://10.0.0.5:8081")
    assert default_hosts("http://10.0.0.5:8008", conveyor=True) == ("http://10.0.0.5:8008", "http://10.0.0.5:8008/files")


def test_init_reads_the_lines_conveyor_credentials_create_prints() -> None:
    from conveyor.agent.setup import parse_credentials_block

    assert parse_credentials_block("access_key: ABC123\nsecret_key: s3-cr_et\n") == {
        "access_key": "ABC123", "secret_key": "s3-cr_et"}
