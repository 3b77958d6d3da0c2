"""`conveyor build --docker`: an image with a task's environment built in (clearml-agent.md §10).

1. A build container, started with the container runtime's command for the task (runtimes/container.py: the image
   choice, Conveyor prepared for the image, caches, CA bundle, ssh, the config file), except that the `-e` settings
   are exported by the build script instead: what `-e` sets would be recorded in the image by the commit.
2. Inside it, one script: the task's setup script; Conveyor's bundle (runtimes/bundle.py) copied from its read-only
   mount to /conveyor/agent, into the container's own file system (a mount is not part of a commit); then, from it,
   `conveyor build --id T --target /conveyor/task`, the folder build (code in /conveyor/task/code, venv in
   /conveyor/task/venv), after the container's start-up installed what the image lacks (a Python among them).
3. `<engine> commit` with the entry point asked for. The build container is removed in every case.

Secrets: the api and git credentials reach the build only through the runtime's mounted config file; caches that
could hold a copy of them (config parse cache, temp files) are on a tmpfs. Nothing of them is in the image, which
gets the api settings when it runs:

    docker run --network host -e CLEARML_API_HOST=... -e CLEARML_API_ACCESS_KEY=... -e CLEARML_API_SECRET_KEY=... IMAGE
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from conveyor.agent.build import BuildError, BuildOptions, get_task
from conveyor.agent.executor import PREBUILT_CODE_ENV, PREBUILT_PYTHON_ENV, PREBUILT_TASK_ENV
from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.env.git_auth import is_local
from conveyor.progress import Log
from conveyor.runtimes import container_args as cargs
from conveyor.runtimes.bundle import Bundle
from conveyor.runtimes.container import START_MODULE, ContainerRuntime, LaunchError

TASK_DIR = "/conveyor/task"  # code/ and venv/, as the folder build lays them out
AGENT_DIR = "/conveyor/agent"  # Conveyor's bundle, baked (the runtime mounts it at bundle.CONTAINER_DIR)
BUILD_DIR = "/conveyor/build"  # mounted for the build only: the build script and the task's setup script
SCRATCH = "/conveyor/scratch"  # a tmpfs: caches and temp files of the build, never committed
ENTRY_POINTS = ("reuse_task", "clone_task")
_NOT_RECORDED = {"e", "env", "env-file", "label"}  # run settings the commit would record in the image
_TAIL = 20  # lines of the build's output kept to explain a failure
_PYTHON_LINE = "  python:      "  # the folder build's summary line naming the environment's python


def build_image(client: ApiCaller, cfg: Config, opts: BuildOptions, log: Log) -> tuple[str, str]:
    """Build the image; returns its name and the engine (docker | podman). Raises BuildError (one line) when a step
    fails."""
    task = get_task(client, opts.task_id)
    if not task.get("script"):
        raise BuildError(f"task {opts.task_id} has no script section (repository, entry point): nothing to build")
    target = opts.target or f"task_id_{opts.task_id}"
    runtime = ContainerRuntime.from_cli(cfg, opts.docker or [], podman=opts.podman, gpus="none")
    engine = runtime.engine_argv
    name = f"conveyor-build-{opts.task_id[:12]}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="conveyor-build-") as tmp:
        build_dir = Path(tmp)
        try:
            # git credentials given here go where the runtime puts them: into its mounted config file
            git = {"CLEARML_AGENT_GIT_USER": opts.git_user, "CLEARML_AGENT_GIT_PASS": opts.git_pass}
            command = runtime.command(opts.task_id, task=_for_image(task, opts), name=name, remove=False,
                                      env={k: v for k, v in git.items() if v}, inner=["sh", f"{BUILD_DIR}/build.sh"])
        except LaunchError as exc:
            raise BuildError(str(exc).removeprefix("container failed to start: ")) from None
        try:
            argv, exports = _build_argv(command.argv, command.image, task, build_dir)
            _write_scripts(build_dir, task, opts, exports, command.bundle)
            log(f"conveyor: building task {opts.task_id} into image {target} from {command.image} with "
                f"{runtime.engine}")
            base = _image_config(engine, command.image)
            try:
                python = _run_build(argv, log)
                _commit(engine, name, target, _changes(opts, task, base, python, command.bundle), log)
            finally:
                subprocess.run([*engine, "rm", "-f", name], capture_output=True, stdin=subprocess.DEVNULL)
        finally:
            command.cleanup()
    return target, runtime.engine


def image_summary(image: str, opts: BuildOptions, engine: str = "docker") -> str:
    if not opts.entry_point:
        where = "requirements in the image's python" if opts.install_globally else f"venv {TASK_DIR}/venv, activated"
        return (f"Image {image} ready: the environment of task {opts.task_id} (code in {TASK_DIR}/code, {where})\n"
                f"  use it with: {engine} run --rm -it {image}")
    what = ("runs task " if opts.entry_point == "reuse_task" else "runs a new clone of task ") + opts.task_id
    return "\n".join([
        f"Image {image} ready: it {what} when started",
        f"  run it with: {engine} run --rm --network host -e CLEARML_API_HOST=<server> "
        f"-e CLEARML_API_ACCESS_KEY=<key> -e CLEARML_API_SECRET_KEY=<secret> {image}",
        "  (the api settings are given when it runs: no credentials are stored in the image)",
    ])


# --- the build container ----------------------------------------------------------------------------------------

def _for_image(task: dict[str, Any], opts: BuildOptions) -> dict[str, Any]:
    """The task as the runtime should see it: --force-docker drops its own image and arguments."""
    if not opts.force_docker:
        return task
    container = {k: v for k, v in (task.get("container") or {}).items() if k not in ("image", "arguments")}
    return {**task, "container": container}


def _build_argv(argv: list[str], image: str, task: dict[str, Any], build_dir: Path) -> tuple[list[str], list[str]]:
    """The runtime's `<engine> run` without what a commit would record (`-e`, `--env-file`, labels), plus the build's
    mounts; and the `-e` settings, as NAME=value, for the script to export."""
    run = argv.index("run")
    at = len(argv) - 1 - argv[::-1].index(image)  # [..., image, the command in the container...]
    kept: list[str] = []
    exports: list[str] = []
    for group in cargs.groups(argv[run + 1:at]):
        key = cargs.switch(group)
        if key in ("e", "env"):
            value = group[-1] if len(group) == 2 else group[0].split("=", 1)[1]  # -e K=V | --env=K=V
            if "=" in value:  # a bare `-e NAME` takes the engine's environment: not ours to export
                exports.append(value)
        elif key not in _NOT_RECORDED:
            kept += group
    mounts = ["-v", f"{build_dir}:{BUILD_DIR}:ro", "--tmpfs", SCRATCH,
              "--label", f"conveyor.build-of={task.get('id', '')}"]
    repository = ((task.get("script") or {}).get("repository") or "").strip()
    if repository and is_local(repository):  # a repository on this machine: at the same path inside
        path = Path(repository.removeprefix("file://")).expanduser().absolute()
        if path.exists() and not any(str(path) in tok for tok in kept):
            mounts += ["-v", f"{path}:{path}:ro"]
    return [*argv[:run + 1], *kept, *mounts, *argv[at:]], exports


def _write_scripts(build_dir: Path, task: dict[str, Any], opts: BuildOptions, exports: list[str],
                   bundle: Bundle) -> None:
    setup = ((task.get("container") or {}).get("setup_shell_script") or "").strip()
    (build_dir / "setup.sh").write_text(setup + "\n" if setup else "")
    inner = bundle.module_argv(START_MODULE, "build", "--id", opts.task_id, "--target", TASK_DIR, at=AGENT_DIR)
    if opts.install_globally:
        inner.append("--install-globally")
    if opts.python_version:
        inner += ["--python-version", opts.python_version]
    lines = [
        "set -e",
        *(f"export {shlex.quote(pair)}" for pair in exports),
        # whatever the build caches or leaves in temp files (the parsed config among them) stays off the image
        f"mkdir -p {SCRATCH}/cache {SCRATCH}/tmp",
        f"export XDG_CACHE_HOME={SCRATCH}/cache TMPDIR={SCRATCH}/tmp",
        f"if [ -s {BUILD_DIR}/setup.sh ]; then echo 'conveyor: setup shell script ...'; "
        f"if command -v bash >/dev/null; then bash {BUILD_DIR}/setup.sh; else sh {BUILD_DIR}/setup.sh; fi; fi",
        f"mkdir -p {AGENT_DIR} && cp -a {bundle.container_dir}/. {AGENT_DIR}/",
        shlex.join(inner),
    ]
    (build_dir / "build.sh").write_text("\n".join(lines) + "\n")


def _run_build(argv: list[str], log: Log) -> str:
    """Run the build container to its end; the python of the environment it built."""
    tail: deque[str] = deque(maxlen=_TAIL)
    python = ""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
    except OSError as exc:
        raise BuildError(f"could not start {argv[0]}: {exc.strerror}") from None
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith(_PYTHON_LINE):
                python = line[len(_PYTHON_LINE):].strip()
            log(line)
    if proc.returncode != 0 or not python:
        raise BuildError(f"building the environment in the container failed (exit code {proc.returncode}): "
                         f"{_reason(list(tail))}")
    return python


def _reason(lines: list[str]) -> str:
    """The inner build's own one-line reason (`conveyor: ...`), else the last line of output."""
    for line in reversed(lines):
        if line.startswith("conveyor: ") and not line.startswith(("conveyor: building", "conveyor: setup")):
            return line.removeprefix("conveyor: ")
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


# --- the image ----------------------------------------------------------------------------------------------------

def _image_config(engine: list[str], image: str) -> dict[str, Any]:
    out = subprocess.run([*engine, "image", "inspect", "--format", "{{json .Config}}", image], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    try:
        return json.loads(out.stdout.strip() or "null") or {}
    except ValueError:
        return {}


def _changes(opts: BuildOptions, task: dict[str, Any], base: dict[str, Any], python: str,
             bundle: Bundle) -> list[str]:
    """The commit's --change instructions: the entry point, and the environment that points execute at the build.
    Every instruction that the build container changed (its command) is set again."""
    changes = [f"LABEL conveyor.task={opts.task_id}"]
    if opts.entry_point in ENTRY_POINTS:
        entry = bundle.module_argv(START_MODULE, "execute", "--id", opts.task_id, at=AGENT_DIR)
        if opts.entry_point == "clone_task":
            entry.append("--clone")
        # CMD rather than ENTRYPOINT: `docker run IMG` runs the task, and when the image serves as a task's image
        # in docker mode the agent's own command replaces this one instead of being appended to it.
        return changes + ["ENTRYPOINT []", f"CMD {json.dumps(entry)}",
                          f"ENV {PREBUILT_TASK_ENV}={opts.task_id}", f"ENV {PREBUILT_CODE_ENV}={TASK_DIR}/code",
                          f"ENV {PREBUILT_PYTHON_ENV}={python}"]
    # the environment only: the image's own command, in the task's working dir, with its venv first on PATH
    working_dir = os.path.normpath(f"{TASK_DIR}/code/{(task.get('script') or {}).get('working_dir') or '.'}")
    changes += ["ENTRYPOINT []", f"CMD {json.dumps(base.get('Cmd') or ['/bin/sh'])}", f"WORKDIR {working_dir}"]
    if not opts.install_globally:
        path = next((e.split("=", 1)[1] for e in base.get("Env") or [] if e.startswith("PATH=")),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        changes += [f"ENV VIRTUAL_ENV={TASK_DIR}/venv", f"ENV PATH={TASK_DIR}/venv/bin:{path}"]
    return changes


def _commit(engine: list[str], container: str, target: str, changes: list[str], log: Log) -> None:
    argv = [*engine, "commit", *[arg for change in changes for arg in ("--change", change)], container, target]
    out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    image_id = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode != 0 or not image_id:  # as the reference's #182: no id is a failure too
        last = next((line.strip() for line in reversed(out.stderr.splitlines()) if line.strip()), "no image id")
        raise BuildError(f"{engine[0]} commit of the build container failed: {last}")
    log(f"conveyor: committed {target} ({image_id.removeprefix('sha256:')[:12]})")
