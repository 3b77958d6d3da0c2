"""What every package manager shares: the error type, the build inputs, streaming of installer output,
and the scrubbing of secrets from anything that reaches a log or an error message."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from conveyor.config import Config
from conveyor.errors import TaskFailure
from conveyor.progress import Log
from conveyor.protocol.failure import FailureClass, of_fetch

# user:password@ (or a bare token@) inside a URL; the scheme keeps it from matching e-mail addresses
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]+)(?::(?P<pw>[^/\s@]*))?@")
# the first line of an installer's own explanation of a failure
_ERROR_START = re.compile(r"^\s*(?:×\s*|error:\s*|ERROR:\s*)", re.IGNORECASE)
_DECORATION = re.compile(r"^[\s×╰─▶│├]*(?:(?:cause|caused by):\s*)?", re.IGNORECASE)
_ERROR_LINES = 8  # of the installer's explanation kept in an error message
_TAIL_LINES = 200  # of installer output kept to explain a failure
REASON_MAX_CHARS = 800


class EnvBuildError(TaskFailure):
    """The task's Python environment could not be built; the message says what failed and what to do."""

    # the worker's set-up (no installer, no free venv folder, a wrong agent setting) unless an installer's own
    # output says otherwise (`run`)
    failure_class = FailureClass.infrastructure.value


def scrub(text: str) -> str:
    """`text` with passwords (and bare tokens) of URLs masked: index URLs often carry credentials."""
    def mask(m: re.Match[str]) -> str:
        if m.group("pw") is None:  # https://TOKEN@host: the user part is the secret
            return f"{m.group('scheme')}****@"
        return f"{m.group('scheme')}{m.group('user')}:****@"
    return _URL_USERINFO.sub(mask, text)


@dataclass
class BuildSpec:
    """Everything a manager needs to create and fill one environment."""
    cfg: Config
    base_python: Path  # the interpreter the venv is made from
    python_version: str  # major.minor of base_python
    lines: list[str]  # pip requirement lines, comments removed
    conda_lines: list[str] = field(default_factory=list)
    base_dir: Path | None = None  # where relative paths in the lines resolve (the repository)
    work_dir: Path | None = None  # the task's working copy (poetry looks for its files there)


class Manager(Protocol):
    name: str
    installs_project: bool  # installs the repository's own project from its lock file: always run, never cached

    def key_options(self, spec: BuildSpec) -> dict:
        """Settings besides the requirement lines that change what gets built (part of the cache key)."""

    def create(self, spec: BuildSpec, path: Path, log: Log) -> Path:
        """Create an empty environment at `path` (which does not exist yet); return its python."""

    def install(self, spec: BuildSpec, python: Path, log: Log) -> int:
        """Install the requirements into the environment of `python`; return how many packages were installed."""


def installer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of installer processes: the agent's own venv must not leak into the task's."""
    leaky = ("VIRTUAL_ENV", "PYTHONHOME", "CONDA_PREFIX", "__PYVENV_LAUNCHER__")
    env = {k: v for k, v in os.environ.items() if k not in leaky}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_streamed(cmd: Sequence[str | os.PathLike[str]], *, log: Log, what: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None, hint: str = "") -> list[str]:
    """Run `cmd`, passing each output line (stdout and stderr, in order) to `log`; return the lines.
    A non-zero exit raises EnvBuildError "<what>: <the installer's own reason>. <hint>"."""
    argv = [os.fspath(c) for c in cmd]
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env if env is not None else installer_env(), cwd=cwd, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)
    except OSError as exc:
        raise EnvBuildError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}. {hint}".strip()) from None
    lines: list[str] = []
    assert proc.stdout is not None
    with proc:
        for raw in proc.stdout:
            line = scrub(raw.rstrip("\r\n"))
            lines.append(line)
            tail.append(line)
            log(line)
    if proc.returncode != 0:
        reason = failure_reason(list(tail)) or f"{Path(argv[0]).name} exited with code {proc.returncode}"
        # all of its output, not only the error line: pip says "no matching distribution" after failing to connect
        raise EnvBuildError(f"{what}: {reason}. {hint}".strip(), failure_class=of_fetch("\n".join(tail)).value)
    return lines


def failure_reason(lines: list[str]) -> str:
    """The installer's own explanation of a failure, on one line: from its first error line, plus its first
    hint in parentheses (uv's hints name unreachable or unauthorized indexes)."""
    start = next((i for i, line in enumerate(lines) if _ERROR_START.match(line)), None)
    if start is None:
        return _shorten(" ".join(line.strip() for line in lines if line.strip())[-REASON_MAX_CHARS:])
    text, hint = "", ""
    for line in lines[start:start + _ERROR_LINES * 2]:
        stripped = line.strip()
        if stripped.lower().startswith("hint:"):
            hint = hint or stripped[len("hint:"):].strip()
            continue
        part = _DECORATION.sub("", _ERROR_START.sub("", line)).strip()
        if not part or hint:
            continue
        if not text:
            text = part
        elif _ERROR_START.match(line):  # a second error of its own
            text += "; " + part
        else:  # the cause of the line before
            text += (" " if text.endswith(":") else ": ") + part
    text = text.rstrip(".") + (f" (hint: {hint.rstrip('.')})" if hint else "")
    return _shorten(text)


def _shorten(text: str) -> str:
    return scrub(text if len(text) <= REASON_MAX_CHARS else text[:REASON_MAX_CHARS] + "…")


_FILE_OPTION = re.compile(r"^(-r|--requirement|-c|--constraint|-e|--editable)(\s+|=)(\S.*)$")


def write_requirements(lines: list[str], folder: Path, base_dir: Path | None) -> Path:
    """The lines as a requirements file in `folder`, with relative paths made absolute against `base_dir`
    (installers resolve them against the file's own folder, which is a temporary one)."""
    path = folder / "requirements.txt"
    path.write_text("".join(_absolute(line, base_dir) + "\n" for line in lines), encoding="utf-8")
    return path


def _absolute(line: str, base_dir: Path | None) -> str:
    if base_dir is None:
        return line
    m = _FILE_OPTION.match(line)
    option, target = (m.group(1) + " ", m.group(3)) if m else ("", line)
    if target == "." or target.startswith(("./", "../")):
        return option + str((base_dir / target).resolve())
    if m and m.group(1) in ("-r", "--requirement", "-c", "--constraint") and not os.path.isabs(target):
        return option + str(base_dir / target)
    return line


@functools.lru_cache(maxsize=1)
def find_uv() -> str | None:
    """The uv binary: the one of the `uv` package Conveyor depends on, else one on PATH."""
    try:
        from uv import find_uv_bin  # the PyPI package ships the binary and this finder
        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def config_list(cfg: Config, key: str) -> list[str]:
    """A setting that may be a list, a single string or unset, as a list of non-empty strings."""
    value = cfg.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if str(v).strip()]


class Timer:
    """Seconds since creation, formatted the way phase log lines show them."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __str__(self) -> str:
        return f"({self.elapsed:.2f} s)"
