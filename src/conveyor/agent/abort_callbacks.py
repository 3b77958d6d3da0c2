"""What a task may do on a user's abort before its process tree is ended (reference §2.5).

- `CLEARML_AGENT_ABORT_CALLBACK_CMD`: a bash command the agent runs first, in the task's environment and folder,
  for at most `CLEARML_AGENT_ABORT_CALLBACK_TIMEOUT` (agent.abort_callback_cmd_timeout_sec) seconds.
- `Task.register_abort_callback` in the task: the SDK writes the runtime properties below, notices the abort itself
  (status message "stopping"), runs the callback, marks it completed and exits. The agent waits for that, up to the
  callback's timeout plus the SDK's poll period (at most agent.abort_callback_max_timeout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from conveyor.agent.process import kill_tree
from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.errors import ConveyorError

log = logging.getLogger(__name__)


class Notice(Protocol):
    """A line for the task's log with its level (Executor.notice): a warning here reads as one in the log."""

    def __call__(self, msg: str, level: str = "info") -> None: ...

CMD_ENV = "CLEARML_AGENT_ABORT_CALLBACK_CMD"
CMD_TIMEOUT_ENV = "CLEARML_AGENT_ABORT_CALLBACK_TIMEOUT"
# runtime properties of the task, written by the clearml SDK
CALLBACK_TIMEOUT = "_abort_callback_timeout"
POLL_FREQ = "_abort_poll_freq"
CALLBACK_COMPLETED = "_abort_callback_completed"
_CHECK_EVERY_SEC = 0.5


def run_abort_command(env: dict[str, str], cwd: Path | None, proc: subprocess.Popen[bytes], cfg: Config,
                      notice: Notice) -> None:
    """Run CLEARML_AGENT_ABORT_CALLBACK_CMD (the agent's environment, else the task's) with its output in the log."""
    command = os.environ.get(CMD_ENV) or env.get(CMD_ENV) or ""
    if not command.strip():
        return
    raw_timeout = os.environ.get(CMD_TIMEOUT_ENV) or env.get(CMD_TIMEOUT_ENV) or cfg.get(
        "agent.abort_callback_cmd_timeout_sec")
    try:
        timeout = float(raw_timeout)
    except (TypeError, ValueError):
        notice(f"conveyor: {CMD_TIMEOUT_ENV}={raw_timeout!r} is not a number of seconds; using 180", "warning")
        timeout = 180.0
    notice(f"conveyor: running the abort callback command ({CMD_ENV}, up to {timeout:g} s)")
    started = time.monotonic()
    child = subprocess.Popen(["bash", "-c", command], cwd=cwd, env={**env, "CLEARML_TASK_PID": str(proc.pid)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    reader = threading.Thread(target=_copy_lines, args=(child, notice), daemon=True)
    reader.start()
    try:
        code = child.wait(timeout)
        took = time.monotonic() - started
        notice(f"conveyor: the abort callback command ended with exit code {code} in {took:.1f} s")
    except subprocess.TimeoutExpired:
        kill_tree(child.pid, 1.0)
        notice(f"conveyor: the abort callback command did not end within {timeout:g} s; it was stopped", "warning")
    reader.join(2)


def _copy_lines(child: subprocess.Popen[bytes], notice: Notice) -> None:
    assert child.stdout is not None
    for raw in iter(child.stdout.readline, b""):
        notice(raw.decode("utf-8", "replace").rstrip("\n"))


def wait_for_sdk_callback(client: ApiCaller, task_id: str, proc: subprocess.Popen[bytes], cfg: Config,
                          notice: Notice) -> None:
    """When the task registered an abort callback, wait until it completed (or the task ended by itself), at most
    its timeout plus the SDK's poll period, capped by agent.abort_callback_max_timeout."""
    runtime = _runtime(client, task_id)
    if runtime is None:
        return
    timeout = _seconds(runtime.get(CALLBACK_TIMEOUT))
    if timeout <= 0:
        return
    wait = min(timeout + _seconds(runtime.get(POLL_FREQ)), float(cfg.get("agent.abort_callback_max_timeout")))
    notice(f"conveyor: the task registered an abort callback; waiting up to {wait:g} s for it before ending the task")
    started = time.monotonic()
    deadline = started + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            notice(f"conveyor: the task ended by itself {time.monotonic() - started:.1f} s after the abort")
            return
        runtime = _runtime(client, task_id) or {}
        if runtime.get(CALLBACK_COMPLETED) not in (None, "", 0, "0", False):
            notice(f"conveyor: the task's abort callback completed in {time.monotonic() - started:.1f} s")
            with contextlib.suppress(subprocess.TimeoutExpired):  # the SDK exits on its own right after
                proc.wait(float(cfg.get("agent.kill_grace_sec")))
            return
        time.sleep(_CHECK_EVERY_SEC)
    notice(f"conveyor: the task's abort callback did not complete within {wait:g} s", "warning")


def _runtime(client: ApiCaller, task_id: str) -> dict[str, Any] | None:
    try:
        found = client.call("tasks.get_all", {"id": [task_id], "only_fields": ["runtime"],
                                              "search_hidden": True})["tasks"]
    except ConveyorError as exc:  # the server is unreachable for now: end the task as if no callback was registered
        log.debug("task %s: could not read its runtime: %s", task_id, exc)
        return None
    return (found[0].get("runtime") or {}) if found else None


def _seconds(value: Any) -> float:
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return 0.0
