"""Tasks in containers, on real engines: Docker (docker.io's dockerd) and Podman, with the local base image.

The engine and the base image are made ready once per session (dockerd started if it is not running, the image
built with .ci/images/build-base-image.sh if missing). In CI (`CI` set) a missing engine fails the tests; elsewhere
they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentkit import DaemonProcess, agent_env, create_task, enqueue, log_text, make_repo, wait_final, wait_status
from conftest import ServerProcess
from containerkit import (  # noqa: F401
    BASE_IMAGE,
    BOOKWORM_BARE_IMAGE,
    BULLSEYE_IMAGE,
    IMAGE_ENVS,
    _ready,
    docker_engine,
    engine,
    stock_image,
)
from conveyor.runtimes import container_args as cargs

SECOND_IMAGE = "conveyor-test/second:1"

TRAIN = """\
import os, pathlib, sys
print("hello from the container", flush=True)
print("in container:", os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"))
print("FOO", os.environ.get("FOO"), "FROM_SETUP", os.environ.get("FROM_SETUP"))
print("image", os.environ.get("CLEARML_DOCKER_IMAGE"), "mark", os.environ.get("CONVEYOR_TEST_MARK"))
ca = os.environ.get("SSL_CERT_FILE")
print("ca bundle", bool(ca and os.path.isfile(ca)))
ssh = pathlib.Path("/root/.ssh")
print("ssh", (ssh / "config").read_text().strip() if (ssh / "config").exists() else None)
if ssh.is_dir():
    (ssh / "known_hosts").write_text("written in the container\\n")
print("python", sys.executable)
"""
LONG = "import time\nprint('started', flush=True)\ntime.sleep(600)\n"


# --- engines ----------------------------------------------------------------------------------------------------

@pytest.fixture
def second_image(engine: str) -> str:
    """The base image plus one variable: proves which image ran."""
    if subprocess.run([engine, "image", "inspect", SECOND_IMAGE], capture_output=True).returncode != 0:
        name = f"conveyor-test-second-{secrets.token_hex(3)}"
        subprocess.run([engine, "run", "--name", name, "--network", "none", BASE_IMAGE, "true"], check=True,
                       capture_output=True)
        try:
            subprocess.run([engine, "commit", "--change", "ENV CONVEYOR_TEST_MARK=second-image", name, SECOND_IMAGE],
                           check=True, capture_output=True)
        finally:
            subprocess.run([engine, "rm", "-f", name], capture_output=True)
    return SECOND_IMAGE


_workers: list[str] = []  # worker ids of this session's daemons


def containers_of(engine: str, task: str) -> list[str]:
    out = subprocess.run([engine, "ps", "-a", "-q", "--filter", f"label=conveyor.task={task}"], capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def wait_gone(engine: str, task: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while containers_of(engine, task):
        assert time.time() < deadline, f"the container of task {task} is still there"
        time.sleep(0.2)


# --- helpers ----------------------------------------------------------------------------------------------------

def container_env(server: ServerProcess, root: Path, **extra: str) -> dict[str, str]:
    """The agent environment, with the test's folder mounted at its own path (the repositories live there) and a
    worker id of its own (a daemon removes leftover containers of its id: other sessions must not share it)."""
    worker = f"test-{secrets.token_hex(4)}"
    _workers.append(worker)
    return agent_env(server, root, **{
        "CLEARML_AGENT__AGENT__EXTRA_DOCKER_ARGUMENTS": json.dumps(["-v", f"{root}:{root}"]),
        "CLEARML_AGENT__AGENT__DOCKER_CONVEYOR_ENV_DIR": IMAGE_ENVS,
        "CLEARML_WORKER_ID": worker,
        **extra})


def start_daemon(server: ServerProcess, root: Path, engine: str, *args: str, env: dict[str, str] | None = None,
                 queue: str = "default") -> DaemonProcess:
    flag = "--podman" if engine == "podman" else "--docker"
    return DaemonProcess(server, root, "--queue", queue, flag, *args, env=env or container_env(server, root))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _, bare = make_repo(tmp_path / "repos", {"train.py": TRAIN, "long.py": LONG})
    return bare


# --- the core cases, on both engines ----------------------------------------------------------------------------

def test_task_runs_in_a_container_with_arguments_and_setup_script(
        sqlite_server: ServerProcess, tmp_path: Path, repo: Path, engine: str) -> None:
    home = sqlite_server.home
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (home / ".ssh" / "config").write_text("Host test\n")
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, engine, "--cpu-only")
    try:
        task = create_task(client, repository=f"file://{repo}", container={
            "image": "", "arguments": "-e FOO=bar",
            "setup_shell_script": "echo setup ran in container: $(test -e /.dockerenv -o -e /run/.containerenv "
                                  "&& echo yes)\nexport FROM_SETUP=exported-in-container"})
        enqueue(client, task)
        doc = wait_final(client, task, timeout=180)
        text = log_text(client, task)
        assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text}\n{daemon.output()}"
    finally:
        daemon.stop()
    assert "hello from the container" in text
    assert "in container: True" in text
    assert "setup ran in container: yes" in text
    assert text.index("setup ran in container") < text.index("conveyor: git checkout")
    assert "FOO bar FROM_SETUP exported-in-container" in text  # the setup script's exports reach the task
    assert f"image {BASE_IMAGE} mark None" in text
    assert "ca bundle True" in text
    assert "ssh Host test" in text
    assert not (home / ".ssh" / "known_hosts").exists(), "the container wrote into the host's ~/.ssh"
    assert "python /root/.clearml/venvs-cache/" in text  # the task's venv: in the image's own cache folder
    assert f"in container conveyor-{task[:12]}" in daemon.output()
    notes = [p.read_text() for p in (tmp_path / "venvs-builds" / "image-uses").iterdir()]
    assert f"{engine} {BASE_IMAGE}\n" in notes, notes  # `conveyor gc` ages images by this last use
    time.sleep(1.1)
    gc = subprocess.run([sys.executable, "-m", "conveyor", "gc", "--older-than", "1s", "--only", "venvs",
                         "--dry-run"], env=daemon.env, capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0 and f"{tmp_path / 'venvs-cache' / 'images'}/" in gc.stdout, gc.stdout + gc.stderr
    assert not containers_of(engine, task)
    assert not list(Path(tempfile.gettempdir()).glob(f"conveyor-run-{task[:12]}-*")), "the run's files were left"


def test_task_image_overrides_the_default(sqlite_server: ServerProcess, tmp_path: Path, repo: Path,
                                          engine: str, second_image: str) -> None:
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, engine, BASE_IMAGE, "-e", "FOO=from-the-agent", "--cpu-only")
    try:
        task = create_task(client, repository=f"file://{repo}", container={"image": second_image})
        default = create_task(client, name="default", repository=f"file://{repo}")
        enqueue(client, task)
        enqueue(client, default)
        docs = [wait_final(client, t, timeout=180) for t in (task, default)]
    finally:
        daemon.stop()
    assert [d["status"] for d in docs] == ["completed", "completed"], [d.get("status_reason") for d in docs]
    assert f"image {SECOND_IMAGE} mark second-image" in log_text(client, task)
    assert f"image {BASE_IMAGE} mark None" in log_text(client, default)
    assert "FOO from-the-agent" in log_text(client, default)  # `--docker IMAGE ARGS`: the args reach the run


def test_abort_stops_the_container(sqlite_server: ServerProcess, tmp_path: Path, repo: Path, engine: str) -> None:
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, engine, "--cpu-only")
    try:
        task = create_task(client, repository=f"file://{repo}", entry_point="long.py")
        enqueue(client, task)
        wait_status(client, task, "in_progress")
        deadline = time.time() + 120
        while "started" not in log_text(client, task):
            assert time.time() < deadline, log_text(client, task)
            time.sleep(0.2)
        assert containers_of(engine, task)
        # The engine's command line holds no secret: credentials travel in the mounted 0600 config file.
        _, secret = sqlite_server.credentials()
        runs = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in os.listdir("/proc") if pid.isdigit()
                and f"conveyor.task={task}".encode() in _cmdline(pid)]
        assert runs and not any(secret.encode() in cmd for cmd in runs)
        client.call("tasks.stop", {"task": task})
        doc = wait_final(client, task, timeout=60)
        assert doc["status"] == "stopped", doc.get("status_reason")
        assert doc["status_reason"] == "task was stopped by tasks.stop"
        wait_gone(engine, task)
    finally:
        daemon.stop()


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_containers_that_cannot_start_fail_with_the_engines_reason(
        sqlite_server: ServerProcess, tmp_path: Path, repo: Path, engine: str) -> None:
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, engine, "--cpu-only")
    try:
        missing = create_task(client, name="missing", repository=f"file://{repo}", container={"image": "nope:1"})
        bad = create_task(client, name="bad", repository=f"file://{repo}",
                          container={"arguments": "--no-such-flag"})
        good = create_task(client, name="good", repository=f"file://{repo}")
        for task in (missing, bad, good):
            enqueue(client, task)
        docs = {name: wait_final(client, t, timeout=180) for name, t in
                (("missing", missing), ("bad", bad), ("good", good))}
    finally:
        daemon.stop()
    reason = docs["missing"]["status_reason"]
    assert docs["missing"]["status"] == "failed"
    assert reason.startswith("container failed to start: Unable to find image 'nope:1' locally"), reason
    assert docs["bad"]["status"] == "failed"
    assert docs["bad"]["status_reason"].startswith("container failed to start:"), docs["bad"]["status_reason"]
    assert "--no-such-flag" in docs["bad"]["status_reason"]
    assert "container failed to start" in log_text(client, bad)
    assert all("Traceback" not in d["status_reason"] for d in docs.values())
    assert docs["good"]["status"] == "completed", docs["good"].get("status_reason")  # the daemon kept serving


# --- stock images: an older Python, no Python, no git -------------------------------------------------------------

WHICH_PYTHON = """\
import sys
print("task python %d.%d" % sys.version_info[:2], sys.executable, flush=True)
import six
print("six", six.__version__, "from", six.__file__)
"""


def test_task_runs_with_the_images_own_python_3_9(sqlite_server: ServerProcess, tmp_path: Path,
                                                  engine: str) -> None:
    """bullseye's Python 3.9 (older than Conveyor's own) runs the task and gets its requirements; the image has no
    git. With agent.docker_install_opencv_libs off, only what uv needs is installed at start."""
    image = stock_image(engine, BULLSEYE_IMAGE)
    _, bare = make_repo(tmp_path / "repos", {"which.py": WHICH_PYTHON})
    client = sqlite_server.client()
    env = container_env(sqlite_server, tmp_path, CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS="false")
    daemon = start_daemon(sqlite_server, tmp_path, engine, image, "--cpu-only", env=env)
    try:
        task = create_task(client, repository=f"file://{bare}", entry_point="which.py", requirements="six==1.16.0\n")
        enqueue(client, task)
        doc = wait_final(client, task, timeout=240)
        text = log_text(client, task)
    finally:
        daemon.stop()
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text}\n{daemon.output()}"
    assert "task python 3.9 /root/.clearml/venvs-cache/" in text  # a venv of the image's python, not Conveyor's
    assert "six 1.16.0 from /root/.clearml/venvs-cache/" in text
    # Debian ships distutils apart, and uv needs it for Python before 3.10; the opencv libraries are not asked for
    assert ("conveyor: installing python3-distutils in the image with apt-get (uv needs distutils for Python 3.9.2)"
            in text)
    assert "libsm6" not in text


def test_python_is_installed_at_start_in_an_image_without_it(sqlite_server: ServerProcess, tmp_path: Path,
                                                             engine: str) -> None:
    """bookworm without Python: apt installs python3 and the opencv libraries at container start, in the task's
    log, through the apt sources the image was built with (the machine's mirror, over --network host)."""
    image = stock_image(engine, BOOKWORM_BARE_IMAGE)
    _, bare = make_repo(tmp_path / "repos", {"which.py": WHICH_PYTHON.replace("import six", "six = sys")
                                             .replace("six.__version__", "'-'").replace("six.__file__", "'-'")})
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, engine, image, "--cpu-only")
    try:
        task = create_task(client, repository=f"file://{bare}", entry_point="which.py")
        enqueue(client, task)
        doc = wait_final(client, task, timeout=300)
        text = log_text(client, task)
    finally:
        daemon.stop()
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text}\n{daemon.output()}"
    assert ("conveyor: installing python3 libsm6 libxext6 libxrender-dev libglib2.0-0 in the image with apt-get "
            "(no Python 3.8+ in the image)") in text
    assert "Setting up python3 (" in text  # apt's own output
    assert "task python 3.11 /root/.clearml/venvs-cache/" in text
    assert text.index("Setting up python3 (") < text.index("conveyor: git checkout")


def test_a_failed_install_at_start_fails_the_task_with_the_reason(sqlite_server: ServerProcess, tmp_path: Path,
                                                                  docker_engine: str) -> None:
    image = stock_image(docker_engine, BOOKWORM_BARE_IMAGE)
    _, bare = make_repo(tmp_path / "repos", {"which.py": WHICH_PYTHON})
    client = sqlite_server.client()
    # apt's only source: a closed port on loopback
    env = container_env(sqlite_server, tmp_path, CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS="false",
                        CLEARML_AGENT__AGENT__EXTRA_DOCKER_SHELL_SCRIPT="echo 'deb http://127.0.0.1:9/debian bookworm "
                                                                        "main' >/etc/apt/sources.list")
    daemon = start_daemon(sqlite_server, tmp_path, docker_engine, image, "--cpu-only", env=env)
    try:
        task = create_task(client, repository=f"file://{bare}", entry_point="which.py")
        enqueue(client, task)
        doc = wait_final(client, task, timeout=120)
        text = log_text(client, task)
    finally:
        daemon.stop()
    reason = doc["status_reason"]
    assert doc["status"] == "failed", f"{reason}\n{text}"
    assert reason == ("container set-up failed: `apt-get install python3` failed with exit code 100: "
                      "E: Unable to locate package python3"), reason
    assert "E: Unable to locate package python3" in text
    assert "Traceback" not in text + reason


# --- the daemon's side: services mode, signals, leftovers, execute --docker -------------------------------------

def test_services_mode_runs_service_tasks_side_by_side(sqlite_server: ServerProcess, tmp_path: Path,
                                                       docker_engine: str) -> None:
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    script = f"""\
import os, pathlib, time
here = pathlib.Path({str(rendezvous)!r})
(here / os.environ["CLEARML_TASK_ID"]).write_text("up")
deadline = time.time() + 90
while len(list(here.iterdir())) < 2:
    assert time.time() < deadline, "the other service task never ran alongside"
    time.sleep(0.1)
print("both running", flush=True)
time.sleep(1)
"""
    _, bare = make_repo(tmp_path / "repos", {"service.py": script})
    client = sqlite_server.client()
    env = container_env(sqlite_server, tmp_path)
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "services", "--services-mode", "5", "--docker",
                           "--cpu-only", "--create-queue", env=env)
    try:
        tasks = [create_task(client, name=f"svc{i}", repository=f"file://{bare}", entry_point="service.py")
                 for i in range(2)]
        for task in tasks:
            enqueue(client, task, "services")
        for task in tasks:
            wait_status(client, task, "in_progress", timeout=60)
        deadline = time.time() + 60
        while True:
            workers = {w["id"] for w in client.call("workers.get_all", {})["workers"]}
            if {f"{env['CLEARML_WORKER_ID']}:service:{t}" for t in tasks} <= workers:
                break
            assert time.time() < deadline, f"service sub-workers not reported: {workers}"
            time.sleep(0.2)
        docs = [wait_final(client, t, timeout=180) for t in tasks]
    finally:
        daemon.stop()
    assert [d["status"] for d in docs] == ["completed", "completed"], [d.get("status_reason") for d in docs]
    assert all("both running" in log_text(client, t) for t in tasks)


def test_second_signal_stops_the_container(sqlite_server: ServerProcess, tmp_path: Path, repo: Path,
                                           docker_engine: str) -> None:
    client = sqlite_server.client()
    daemon = start_daemon(sqlite_server, tmp_path, docker_engine, "--cpu-only")
    task = create_task(client, repository=f"file://{repo}", entry_point="long.py")
    enqueue(client, task)
    wait_status(client, task, "in_progress")
    deadline = time.time() + 120
    while "started" not in log_text(client, task):
        assert time.time() < deadline, log_text(client, task)
        time.sleep(0.2)
    daemon.signal(signal.SIGTERM)
    time.sleep(0.3)
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(60) == 0, daemon.output()
    doc = wait_final(client, task, timeout=30)
    assert doc["status"] == "stopped", doc.get("status_reason")
    assert "agent shut down" in doc["status_reason"]
    wait_gone(docker_engine, task)


def test_leftover_containers_of_a_killed_daemon_are_removed(sqlite_server: ServerProcess, tmp_path: Path,
                                                            repo: Path, docker_engine: str) -> None:
    client = sqlite_server.client()
    env = container_env(sqlite_server, tmp_path)
    first = start_daemon(sqlite_server, tmp_path, docker_engine, "--cpu-only", env=env)
    task = create_task(client, repository=f"file://{repo}", entry_point="long.py")
    enqueue(client, task)
    wait_status(client, task, "in_progress")
    deadline = time.time() + 120
    while not containers_of(docker_engine, task):
        assert time.time() < deadline
        time.sleep(0.2)
    first.proc.kill()  # no chance to stop anything: its container runs on
    first.proc.wait()
    assert containers_of(docker_engine, task)
    second = start_daemon(sqlite_server, tmp_path, docker_engine, "--cpu-only", env=env)
    try:
        wait_gone(docker_engine, task, timeout=10)
        doc = wait_final(client, task, timeout=30)
        assert doc["status"] == "failed"
        assert "its container was removed" in doc["status_reason"]
        assert f"removed the leftover container of task {task}" in second.output()
    finally:
        second.stop()


def test_execute_docker_runs_one_task_in_a_container(sqlite_server: ServerProcess, tmp_path: Path, repo: Path,
                                                     docker_engine: str) -> None:
    client = sqlite_server.client()
    task = create_task(client, repository=f"file://{repo}", container={"arguments": "-e FOO=standalone"})
    env = container_env(sqlite_server, tmp_path)
    env.pop("CLEARML_WORKER_ID")
    out = subprocess.run([sys.executable, "-m", "conveyor", "execute", "--id", task, "--docker", "--cpu-only"],
                         env=env, capture_output=True, text=True, timeout=300)
    doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert out.returncode == 0 and doc["status"] == "completed", f"{doc.get('status_reason')}\n{out.stdout}{out.stderr}"
    assert "FOO standalone" in log_text(client, task)
    missing = create_task(client, repository=f"file://{repo}", container={"image": "nope:2"})
    out = subprocess.run([sys.executable, "-m", "conveyor", "execute", "--id", missing, "--docker"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "Unable to find image 'nope:2' locally" in out.stderr
    assert client.call("tasks.get_by_id", {"task": missing})["task"]["status"] == "failed"


# --- the command, without running it ----------------------------------------------------------------------------

def test_argument_merging_filters_and_protected_switches() -> None:
    agent = ["--ipc=host", "-v", "/a:/a", "--entrypoint", "x"]
    task = ["--ipc", "private", "-e", "A=1", "--rm", "--network=none", "--privileged"]
    merged = cargs.merge(agent, task, forbidden=["entrypoint"], protected=["ipc", "network"])
    assert merged == ["--ipc=host", "-v", "/a:/a", "-e", "A=1", "--rm", "--network=none", "--privileged"]
    assert cargs.merge(agent, task, protected=["ipc"], agent_first=False)[:2] == ["-v", "/a:/a"]
    assert cargs.merge([], task, filters=[r"^-e "]) == ["-e", "A=1"]
    assert cargs.sets(merged, "network", "net") and not cargs.sets(agent, "network", "net")
    assert cargs.split_args(["-e A=1", "--ipc=host"]) == ["-e", "A=1", "--ipc=host"]


def test_gpu_flags_and_masking() -> None:
    assert cargs.gpu_flags("docker", "all") == ["--gpus", "all"]
    assert cargs.gpu_flags("docker", "0,1") == ["--gpus", '"device=0,1"']
    assert cargs.gpu_flags("docker", "0.1") == ["--gpus", '"device=0:1"']
    assert cargs.gpu_flags("docker", "none") == [] and cargs.gpu_flags("docker", None) == []
    assert cargs.gpu_flags("podman", "0,1") == ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    assert cargs.gpu_flags("podman", "all") == ["--device", "nvidia.com/gpu=all"]
    argv = ["docker", "run", "-e", "MY_TOKEN=abc", "-e", "FOO=1", "--env=DB_PASSWORD=x", "-e", "U=https://u:pw@h/x"]
    assert cargs.mask(argv) == ["docker", "run", "-e", "MY_TOKEN=****", "-e", "FOO=1", "--env=DB_PASSWORD=****",
                                "-e", "U=https://u:****@h/x"]


def test_cli_reads_engine_arguments_after_the_image() -> None:
    from conveyor.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["daemon", "--queue", "q", "--docker", "my/img:1", "--ipc=host", "-v", "/a:/b",
                              "--cpu-only", "--force-current-version"])
    assert (args.docker, args.podman, args.queue, args.cpu_only) == (["my/img:1", "--ipc=host", "-v", "/a:/b"],
                                                                     False, ["q"], True)
    args = parser.parse_args(["daemon", "--podman", "--queue", "q"])
    assert (args.docker, args.podman) == ([], True)
    assert parser.parse_args(["daemon"]).docker is None
    assert parser.parse_args(["execute", "--id", "t", "--docker=img"]).docker == ["img"]


@pytest.fixture(autouse=True)
def _no_stray_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test must not leave its containers running for the next one."""
    yield
    for name in sorted(_ready):
        for worker in _workers:
            ids = subprocess.run([name, "ps", "-a", "-q", "--filter", f"label=conveyor.parent-worker={worker}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run([name, "rm", "-f", *ids], capture_output=True)
    _workers.clear()


def test_an_abort_during_the_install_at_start_stops_the_task(sqlite_server: ServerProcess, tmp_path: Path,
                                                             docker_engine: str) -> None:
    """apt at container start can take minutes: an abort meanwhile ends it and the task, as later in `execute`."""
    import socket

    image = stock_image(docker_engine, BOOKWORM_BARE_IMAGE)
    _, bare = make_repo(tmp_path / "repos", {"which.py": WHICH_PYTHON})
    client = sqlite_server.client()
    with socket.socket() as silent:  # apt's only source accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        env = container_env(sqlite_server, tmp_path, CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS="false",
                            CLEARML_AGENT__AGENT__EXTRA_DOCKER_SHELL_SCRIPT=f"echo 'deb http://127.0.0.1:{port}/debian "
                                                                            "bookworm main' >/etc/apt/sources.list")
        daemon = start_daemon(sqlite_server, tmp_path, docker_engine, image, "--cpu-only", env=env)
        try:
            task = create_task(client, repository=f"file://{bare}", entry_point="which.py")
            enqueue(client, task)
            deadline = time.time() + 120
            while "conveyor: installing python3" not in log_text(client, task):
                assert time.time() < deadline, log_text(client, task) + daemon.output()
                time.sleep(0.2)
            client.call("tasks.stop", {"task": task})
            stopped = time.monotonic()
            doc = wait_final(client, task, timeout=60)
            took = time.monotonic() - stopped
            deadline = time.time() + 30
            while containers_of(docker_engine, task) and time.time() < deadline:
                time.sleep(0.2)
            assert not containers_of(docker_engine, task), "the container outlived its aborted task"
        finally:
            daemon.stop()
    assert (doc["status"], doc["status_reason"]) == ("stopped", "task was stopped by tasks.stop"), doc
    assert took < 1 + 3 + 3, f"the abort took {took:.1f} s"
    assert "stopped during the container set-up" in log_text(client, task)
