"""A task's entry point as a command line: what `conveyor execute` runs and what `conveyor build` records.

`script.entry_point` is a file in the working dir (`train.py --lr 1`), `-m module`, a shell script or a notebook; the
task's `Args` may follow (args_on_command_line). The python is left as PYTHON until the environment is built, so
that a missing entry point fails the task before anything is installed.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from conveyor.config import Config
from conveyor.env import notebook
from conveyor.errors import TaskFailure
from conveyor.progress import Log
from conveyor.protocol.tags import ARGS_ON_COMMAND_LINE

PYTHON = "{python}"  # in an entry argv: the task environment's interpreter, once it is known


def entry_argv(task: dict[str, Any], cfg: Config, working_dir: Path, log: Log) -> list[str]:
    """The command that runs the task's entry point in `working_dir`, with PYTHON for the interpreter. A notebook is
    converted to a script beside it first. Raises TaskFailure when there is nothing to run."""
    script: dict[str, Any] = task.get("script") or {}
    entry = (script.get("entry_point") or "").strip()
    if not entry:
        raise TaskFailure("the task has no entry point: set script.entry_point (e.g. train.py)")
    parts = shlex.split(entry)
    binary = (script.get("binary") or "python").strip()
    if parts[0] == "-m":
        if len(parts) < 2:
            raise TaskFailure("the entry point '-m' names no module")
        head = [PYTHON, "-u", "-m", *parts[1:]]
    else:
        target = working_dir / parts[0]
        if not target.is_file():
            raise TaskFailure(f"entry point {parts[0]!r} not found in {script.get('working_dir') or '.'} of the "
                              "repository")
        if binary in ("bash", "sh") or parts[0].endswith(".sh"):
            head = [binary if binary in ("bash", "sh") else "bash", *parts]
        elif notebook.is_notebook(parts[0]):
            try:
                converted = notebook.convert(target, log)
            except notebook.NotebookError as exc:
                raise TaskFailure(str(exc)) from None
            head = [PYTHON, "-u", str(Path(parts[0]).with_name(converted.name)), *parts[1:]]
        else:
            head = [PYTHON, "-u", *parts]
    return head + (task_args(task) if args_on_command_line(task, cfg) else [])


def with_python(argv: list[str], python: Path | str) -> list[str]:
    return [str(python) if part == PYTHON else part for part in argv]


def entry_file(script: dict[str, Any]) -> str:
    """The entry point's file name (for a script stored in the task itself), or the whole `-m module`."""
    entry = (script.get("entry_point") or "").strip()
    if not entry:
        raise TaskFailure("the task has no entry point: set script.entry_point (e.g. train.py)")
    return shlex.split(entry)[0] if not entry.startswith("-m ") else entry


def entry_dir(script: dict[str, Any], working_dir: Path) -> Path:
    """The folder of the entry point's file (the working dir for `-m module`)."""
    entry = (script.get("entry_point") or "").strip()
    parts = shlex.split(entry) if entry else []
    if not parts or parts[0] == "-m":
        return working_dir
    return (working_dir / parts[0]).parent


def task_python_version(cfg: Config, script: dict[str, Any]) -> str | None:
    """The python version the task asks for (`script.binary` "python3.11"), unless
    agent.ignore_requested_python_version."""
    if cfg.get("agent.ignore_requested_python_version"):
        return None
    version = (script.get("binary") or "").strip().removeprefix("python")
    return version if version and version[0].isdigit() else None


def args_on_command_line(task: dict[str, Any], cfg: Config) -> bool:
    """Whether the task's `Args` go on the entry point's command line. Decided by what the task records, never by
    its values: a script recorded by the clearml SDK binds argparse itself (the SDK applies the edited `Args` inside
    the process, and rewriting argv would break `nargs`, `store_true` or positional arguments); a task made with
    `conveyor task create --args` is tagged for the command line. agent.args_to_argv always/never overrides."""
    mode = str(cfg.get("agent.args_to_argv") or "auto").strip().lower()
    if mode in ("always", "true", "yes", "1"):
        return True
    if mode in ("never", "false", "no", "0"):
        return False
    return ARGS_ON_COMMAND_LINE in (task.get("system_tags") or [])


def task_args(task: dict[str, Any]) -> list[str]:
    """The `Args` hyper-parameters as argv: `--name value`; a name with its own dashes is kept; a bool flag alone."""
    argv: list[str] = []
    for name, param in ((task.get("hyperparams") or {}).get("Args") or {}).items():
        value = "" if param.get("value") is None else str(param.get("value"))
        flag = name if name.startswith("-") else f"--{name}"
        if (param.get("type") or "").lower() == "bool":  # a store_true flag: present or absent
            if value.lower() in ("true", "1", "yes"):
                argv.append(flag)
            continue
        argv.append(flag)
        if value != "":
            argv.append(value)
    return argv

