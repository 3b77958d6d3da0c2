"""Running `conveyor execute` as a local process: the venv-mode runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class LocalRuntime:
    """Starts each task's executor in its own session, so that signals to the daemon's terminal do not reach it
    and the daemon decides how a task is stopped."""

    config_file: str | None = None

    def command(self, task_id: str) -> list[str]:
        cmd = [sys.executable, "-m", "conveyor"]
        if self.config_file:
            cmd += ["--config-file", self.config_file]
        return cmd + ["execute", "--id", task_id]

    def launch(self, task_id: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(task_id), env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                start_new_session=True)
