"""Running git for the agent: no prompts, no secrets in what it prints back, failures as GitFailed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from conveyor.env.git_auth import scrub
from conveyor.errors import TaskFailure, UserError

# variables from an enclosing hook or shell that would point git at another repository
_FOREIGN_GIT_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                     "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT")


class GitNotFound(UserError):
    """No git executable on PATH: the machine needs git installed."""

    def __init__(self) -> None:
        super().__init__("git is not installed (or not on PATH) on this machine",
                         hint="install git (e.g. `apt-get install git`)")


class GitFailed(TaskFailure):
    """A git command exited non-zero; `detail` is its stderr with secrets masked."""

    def __init__(self, command: str, detail: str):
        super().__init__(f"`git {command}` failed: {detail}")
        self.command = command
        self.detail = detail

    @property
    def last_line(self) -> str:
        lines = [line.strip() for line in self.detail.splitlines() if line.strip()]
        return lines[-1] if lines else "(no message)"


class Git:
    """One agent-side git session: fixed environment (askpass, no prompts) and `-c` settings for every call."""

    def __init__(self, remote_env: dict[str, str] | None = None, secrets: Sequence[str] = (),
                 config: Sequence[str] = ()):
        exe = shutil.which("git")
        if exe is None:
            raise GitNotFound()
        self.exe = exe
        self.secrets = [s for s in secrets if s]
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_GIT_VARS}
        env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for a password on a terminal nobody watches
        env.setdefault("GIT_SSH_COMMAND", "ssh -oBatchMode=yes")  # nor for an ssh passphrase or host key
        env["LC_ALL"] = "C"  # English messages: errors are classified by their text
        self.env = env
        # askpass variables only for commands that talk to the remote: local ones (and their hooks) never see them
        self.remote_env = {**env, **(remote_env or {})}
        # raw paths, no colour, no detached-HEAD lecture, whatever the user's git config says
        self.config = ["core.quotepath=off", "color.ui=never", "advice.detachedHead=false", *config]

    def run(self, *args: str, cwd: Path | None = None, input: str | None = None, check: bool = True,
            config: Sequence[str] = (), remote: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = [self.exe]
        for setting in (*self.config, *config):
            cmd += ["-c", setting]
        cmd += list(args)
        result = subprocess.run(cmd, cwd=cwd, env=self.remote_env if remote else self.env, input=input,
                                capture_output=True, text=True, encoding="utf-8", errors="replace",
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise GitFailed(self.describe(args), self.scrub(result.stderr.strip() or result.stdout.strip()))
        return result

    def ok(self, *args: str, cwd: Path | None = None) -> str | None:
        """stdout (stripped) when the command succeeds, None when it fails: for questions like rev-parse."""
        result = self.run(*args, cwd=cwd, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def describe(self, args: Sequence[str]) -> str:
        return self.scrub(" ".join(args))
