"""`conveyor build`: a task's environment built ahead of time (clearml-agent.md §10).

Into a folder: `<target>/code` (the checkout with the diff applied) and `<target>/venv` (the task's requirements),
outside every cache; nothing runs and the task is not changed. Into an image: see agent/image_build.py.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.agent.entry_point import entry_argv, entry_file, task_python_version, with_python
from conveyor.agent.folders import venvs_dir
from conveyor.client.caller import ApiCaller
from conveyor.client.errors import ApiCallError
from conveyor.config import Config
from conveyor.errors import TaskFailure, UserError, map_exceptions
from conveyor.progress import Log

MARKER = ".conveyor-build.json"  # in a folder made by build: it may be rebuilt in place


class BuildError(UserError):
    """A build step failed; the message says which and why, on one line, without secrets."""


@dataclass
class BuildOptions:
    task_id: str
    target: str | None = None
    docker: list[str] | None = None  # None: build into a folder; [] the default image; [image, *run arguments]
    podman: bool = False
    force_docker: bool = False
    python_version: str | None = None
    entry_point: str | None = None  # reuse_task | clone_task | None (image with the environment only)
    install_globally: bool = False
    git_user: str | None = None
    git_pass: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuiltEnvironment:
    task_id: str
    target: Path
    code_dir: Path
    working_dir: Path
    python: Path
    venv: Path | None  # None when installed into the interpreter itself (--install-globally)
    command: list[str]  # the entry point, as `execute` would run it


def get_task(client: ApiCaller, task_id: str) -> dict[str, Any]:
    try:
        return client.call("tasks.get_by_id", {"task": task_id})["task"]
    except ApiCallError as exc:
        raise BuildError(f"task {task_id} not found: {exc.msg} — check the id (`conveyor task list`)") from None


def default_folder(cfg: Config, task_id: str) -> Path:
    with map_exceptions({TaskFailure: BuildError}):
        return venvs_dir(cfg) / f"build-{task_id}"


def build_folder(client: ApiCaller, cfg: Config, opts: BuildOptions, log: Log) -> BuiltEnvironment:
    """Clone (through the clone cache), apply the diff, build the venv, into `opts.target`."""
    from conveyor.env import python as pyenv
    from conveyor.env import vcs

    task = get_task(client, opts.task_id)
    script: dict[str, Any] = task.get("script") or {}
    if not script:
        raise BuildError(f"task {opts.task_id} has no script section (repository, entry point): nothing to build")
    target = Path(opts.target).expanduser().absolute() if opts.target else default_folder(cfg, opts.task_id)
    _claim_folder(target)
    code_dir, venv = target / "code", target / "venv"
    log(f"conveyor: building the environment of task {opts.task_id} in {target}")

    repository = (script.get("repository") or "").strip()
    try:
        if repository:
            vcs.prepare_repository(repository, code_dir, branch=script.get("branch") or None,
                                   tag=script.get("tag") or None, commit=script.get("version_num") or None,
                                   auth=vcs.GitAuth.from_config(cfg, opts.git_user, opts.git_pass), cfg=cfg, log=log)
            vcs.apply_diff(code_dir, script.get("diff") or "", log=log)
        else:
            if not (script.get("diff") or "").strip():
                raise BuildError(f"task {opts.task_id} has neither a repository nor a script (diff) to build")
            code_dir.mkdir(parents=True, exist_ok=True)
            entry = (script.get("entry_point") or "").strip()
            with map_exceptions({TaskFailure: BuildError}):
                vcs.write_standalone_script(code_dir, entry_file(script) if entry else "", script["diff"])
    except vcs.VcsError as exc:
        raise BuildError(f"preparing the code failed: {exc}") from None

    working_dir = (code_dir / (script.get("working_dir") or ".")).resolve()
    if not working_dir.is_dir() or code_dir.resolve() not in (working_dir, *working_dir.parents):
        raise BuildError(f"working directory {script.get('working_dir')!r} does not exist in the repository")
    try:
        reqs = pyenv.resolve_requirements(script.get("requirements"), code_dir, cfg=cfg)
        env = pyenv.build_environment_at(reqs, None if opts.install_globally else venv, cfg=cfg,
                                         python_version=opts.python_version or task_python_version(cfg, script),
                                         work_dir=code_dir, log=log)
    except pyenv.EnvBuildError as exc:
        raise BuildError(f"building the python environment failed: {exc}") from None
    built = BuiltEnvironment(task_id=opts.task_id, target=target, code_dir=code_dir, working_dir=working_dir,
                             python=env.python, venv=None if opts.install_globally else env.path,
                             command=entry_command(cfg, task, working_dir, env.python))
    (target / MARKER).write_text(json.dumps({"task": opts.task_id, "python": str(env.python),
                                             "code": str(code_dir), "working_dir": str(working_dir),
                                             "command": built.command}, indent=1) + "\n")
    return built


def summary(built: BuiltEnvironment) -> str:
    run = f"cd {shlex.quote(str(built.working_dir))} && {shlex.join(built.command)}"
    return "\n".join([
        f"Environment of task {built.task_id} ready in {built.target}",
        f"  venv:        {built.venv if built.venv else '(installed into ' + str(built.python) + ')'}",
        f"  python:      {built.python}",
        f"  code:        {built.code_dir}",
        f"  working dir: {built.working_dir}",
        f"  entry point: {shlex.join(built.command[2:] if built.command[0] == str(built.python) else built.command)}",
        f"  run it with: {run}",
    ])


def entry_command(cfg: Config, task: dict[str, Any], working_dir: Path, python: Path) -> list[str]:
    """The entry point as `execute` runs it, with this environment's python."""
    with map_exceptions({TaskFailure: BuildError}):
        return with_python(entry_argv(task, cfg, working_dir, lambda _line: None), python)


def _claim_folder(target: Path) -> None:
    """The target is ours when it is empty, missing, or an earlier build's: never clear a folder of the user's."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MARKER).is_file())):
        raise BuildError(f"{target} exists and is not an earlier build's folder — choose an empty or new --target")
    target.mkdir(parents=True, exist_ok=True)
    if not (target / MARKER).is_file():  # claimed before anything is put there, so a failed build may retry
        (target / MARKER).write_text("{}\n")
