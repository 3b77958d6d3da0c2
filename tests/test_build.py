"""`conveyor build`: a task's environment into a folder (a working venv and checkout), and into an image that runs
the task on its own with `docker run`."""

from __future__ import annotations

import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentkit import agent_env, create_task, git, log_text, make_repo, wait_final
from conftest import ServerProcess
from containerkit import (  # noqa: F401
    base_image,
    container_agent_env,
    containers_labelled,
    docker_engine,
    engine,
    ensure_base_image,
    remove_image,
)

TRAIN = """\
import sys
import six
print("six", six.__version__)
print("argv", sys.argv[1:])
"""


def conveyor(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def task_with_diff(sqlite_server: ServerProcess, tmp_path: Path) -> str:
    """A task of a real repository at its commit, with an uncommitted change, requirements and arguments."""
    work, bare = make_repo(tmp_path / "repos", {"train.py": TRAIN})
    (work / "train.py").write_text(TRAIN + 'print("from the diff")\n')
    diff = git(work, "diff", "HEAD") + "\n"
    client = sqlite_server.client()
    return create_task(client, repository=f"file://{bare}", diff=diff, requirements="six==1.16.0\n",
                       args={"lr": "0.1"})


def test_build_folder_makes_a_working_environment(sqlite_server: ServerProcess, tmp_path: Path,
                                                  task_with_diff: str) -> None:
    env = agent_env(sqlite_server, tmp_path)
    target = tmp_path / "built"
    done = conveyor(env, "build", "--id", task_with_diff, "--target", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Environment of task {task_with_diff} ready in {target}" in done.stdout
    python = target / "venv" / "bin" / "python"
    assert f"python:      {python}" in done.stdout
    # the venv is the target's own, not a cached one shared with tasks
    assert not python.parent.parent.is_symlink() and (target / "venv" / "pyvenv.cfg").is_file()
    ran = subprocess.run([str(python), "train.py", "--lr", "0.1"], cwd=target / "code", capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert ran.stdout.splitlines() == ["six 1.16.0", "argv ['--lr', '0.1']", "from the diff"]
    assert f"run it with: cd {target / 'code'} && {python} -u train.py --lr 0.1" in done.stdout
    # nothing ran: the task is as it was
    doc = sqlite_server.client().call("tasks.get_by_id", {"task": task_with_diff})["task"]
    assert doc["status"] == "created"
    # a second build into the same folder replaces the first
    again = conveyor(env, "build", "--id", task_with_diff, "--target", str(target))
    assert again.returncode == 0, again.stdout + again.stderr


def test_build_errors_are_one_line(sqlite_server: ServerProcess, tmp_path: Path, task_with_diff: str) -> None:
    env = agent_env(sqlite_server, tmp_path)
    unknown = conveyor(env, "build", "--id", "0" * 32, "--target", str(tmp_path / "x"))
    assert unknown.returncode == 2
    assert unknown.stderr.startswith(f"conveyor: task {'0' * 32} not found")
    assert "Traceback" not in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = conveyor(env, "build", "--id", task_with_diff, "--target", str(mine))
    assert refused.returncode == 2 and "is not an earlier build's folder" in refused.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    client = sqlite_server.client()
    bad = create_task(client, repository=f"file://{tmp_path}/none.git")
    failed = conveyor(env, "build", "--id", bad, "--target", str(tmp_path / "y"))
    assert failed.returncode == 2 and failed.stderr.startswith("conveyor: preparing the code failed")
    assert "Traceback" not in failed.stderr


# --- into an image ----------------------------------------------------------------------------------------------

@pytest.fixture
def built_images() -> Iterator[list[tuple[str, str]]]:
    """(engine, image) pairs that a test made: removed afterwards."""
    made: list[tuple[str, str]] = []
    yield made
    for engine_name, image in made:
        remove_image(engine_name, image)


def build_image(env: dict[str, str], engine_name: str, task: str, *extra: str,
                from_image: str | None = None) -> tuple[str, subprocess.CompletedProcess[str]]:
    image = f"conveyor-test/build-{task[:12]}:{secrets.token_hex(3)}"
    done = conveyor(env, "build", "--id", task, f"--{engine_name}", *([from_image] if from_image else []),
                    "--target", image, *extra, timeout=600)
    return image, done


def api_env(server: ServerProcess) -> list[str]:
    key, secret = server.credentials()
    return ["-e", f"CLEARML_API_HOST={server.url}", "-e", f"CLEARML_API_ACCESS_KEY={key}",
            "-e", f"CLEARML_API_SECRET_KEY={secret}"]


def image_files_holding(engine_name: str, image: str, needle: str) -> list[str]:
    """Paths of the image's files (and config) that contain `needle`: the whole file system, as exported."""
    config = subprocess.run([engine_name, "image", "inspect", image], capture_output=True, text=True,
                            check=True).stdout
    found = ["<image config>"] if needle in config else []
    cid = subprocess.run([engine_name, "create", image], capture_output=True, text=True, check=True).stdout.strip()
    try:
        with subprocess.Popen([engine_name, "export", cid], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        data = tar.extractfile(member)
                        if data is not None and needle.encode() in data.read():
                            found.append(member.name)
    finally:
        subprocess.run([engine_name, "rm", "-f", cid], capture_output=True)
    return found


@pytest.mark.timeout(600)
def test_build_image_runs_the_task_with_a_plain_run(sqlite_server: ServerProcess, tmp_path: Path, engine: str,
                                                    base_image: str, task_with_diff: str,
                                                    built_images: list[tuple[str, str]]) -> None:
    """`build --docker --entry-point reuse_task`, then `docker run` of the image alone runs the task: no clone, no
    install at run time, and no credential stored in the image."""
    env = container_agent_env(agent_env(sqlite_server, tmp_path))
    image, done = build_image(env, engine, task_with_diff, "--entry-point", "reuse_task", from_image=base_image)
    built_images.append((engine, image))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Image {image} ready: it runs task {task_with_diff} when started" in done.stdout
    client = sqlite_server.client()
    assert client.call("tasks.get_by_id", {"task": task_with_diff})["task"]["status"] == "created"
    assert not containers_labelled(engine, f"conveyor.build-of={task_with_diff}"), "the build container was left"
    _, secret = sqlite_server.credentials()
    assert image_files_holding(engine, image, secret) == []

    ran = subprocess.run([engine, "run", "--rm", "--network", "host", *api_env(sqlite_server), image],
                         capture_output=True, text=True, timeout=300)
    doc = wait_final(client, task_with_diff, timeout=60)
    text = log_text(client, task_with_diff)
    assert ran.returncode == 0 and doc["status"] == "completed", f"{ran.stdout}\n{ran.stderr}\n{text}"
    assert "six 1.16.0" in text and "argv ['--lr', '0.1']" in text and "from the diff" in text
    assert "using the prebuilt code in /conveyor/task/code" in text
    assert "git checkout" not in text and "python environment" not in text


@pytest.mark.timeout(600)
def test_build_image_clone_task_and_environment_only(sqlite_server: ServerProcess, tmp_path: Path,
                                                     docker_engine: str, task_with_diff: str,
                                                     built_images: list[tuple[str, str]]) -> None:
    base = ensure_base_image(docker_engine)
    env = container_agent_env(agent_env(sqlite_server, tmp_path))
    client = sqlite_server.client()
    client.call("tasks.edit", {"task": task_with_diff, "force": True,
                               "container": {"image": base, "setup_shell_script": "echo from-setup > /setup.txt"}})
    # clone_task: each start runs a new clone; the task itself stays as it was
    image, done = build_image(env, "docker", task_with_diff, "--entry-point", "clone_task")
    built_images.append(("docker", image))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for _ in range(2):
        ran = subprocess.run(["docker", "run", "--rm", "--network", "host", *api_env(sqlite_server), image],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stdout + ran.stderr
    clones = [t for t in client.call("tasks.get_all", {"only_fields": ["id", "name", "status"]})["tasks"]
              if t["id"] != task_with_diff]
    assert len(clones) == 2 and all(t["status"] == "completed" for t in clones), clones
    assert "six 1.16.0" in log_text(client, clones[0]["id"])
    assert client.call("tasks.get_by_id", {"task": task_with_diff})["task"]["status"] == "created"

    # no entry point: the environment, activated, in the task's working dir; the setup script ran at build time
    image, done = build_image(env, "docker", task_with_diff)
    built_images.append(("docker", image))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "sh", "-c",
                          "cat /setup.txt && python train.py --lr 2"], capture_output=True, text=True, timeout=120)
    assert ran.stdout.splitlines() == ["from-setup", "six 1.16.0", "argv ['--lr', '2']", "from the diff"], ran.stderr


@pytest.mark.timeout(300)
def test_build_image_errors(sqlite_server: ServerProcess, tmp_path: Path, docker_engine: str,
                            task_with_diff: str) -> None:
    base = ensure_base_image(docker_engine)
    env = container_agent_env(agent_env(sqlite_server, tmp_path))
    unknown = conveyor(env, "build", "--id", "0" * 32, "--docker", base, "--target", "conveyor-test/none:1")
    assert unknown.returncode == 2 and unknown.stderr.startswith(f"conveyor: task {'0' * 32} not found")

    missing = conveyor(env, "build", "--id", task_with_diff, "--docker", "conveyor-test/no-such-image:0",
                       "--target", "conveyor-test/none:1")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "conveyor-test/no-such-image:0" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    client = sqlite_server.client()
    work, bare = make_repo(tmp_path / "other", {"train.py": "print('x')\n"})
    bad = create_task(client, repository=f"file://{bare}", diff="diff --git a/nope.py b/nope.py\n--- a/nope.py\n"
                      "+++ b/nope.py\n@@ -1 +1 @@\n-old\n+new\n")
    failed = conveyor(env, "build", "--id", bad, "--docker", base, "--target", "conveyor-test/none:1")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert failed.stderr.startswith("conveyor: building the environment in the container failed (exit code 2): "
                                    "preparing the code failed"), failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    assert not containers_labelled("docker", f"conveyor.build-of={bad}"), "the build container was left"
    assert subprocess.run(["docker", "image", "inspect", "conveyor-test/none:1"], capture_output=True).returncode != 0
