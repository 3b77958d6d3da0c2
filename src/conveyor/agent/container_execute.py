"""`conveyor execute --id T --docker [IMAGE [ARGS]]`: the same `conveyor execute`, in the task's container.

The one inside reports everything (status, logs, its own worker) as a standalone execute does; this side only
starts the container, passes Ctrl-C / SIGTERM on as a container stop, and fails the task when the container could
not start at all (nothing inside could say why).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.errors import ConveyorError
from conveyor.protocol.failure import FIELD as FAILURE_CLASS
from conveyor.protocol.failure import FailureClass, of_image
from conveyor.runtimes.base import TaskRun
from conveyor.runtimes.container import ContainerRuntime, LaunchError

log = logging.getLogger(__name__)


def execute_in_container(client: ApiCaller, cfg: Config, task_id: str, docker: Sequence[str], *, podman: bool = False,
                         gpus: str | None = None, git_user: str | None = None, git_pass: str | None = None,
                         execute_args: Sequence[str] = ()) -> int:
    """Run the task in its container; `execute_args` are more flags for the `conveyor execute` inside."""
    runtime = ContainerRuntime.from_cli(
        cfg, docker, podman=podman, gpus=gpus, execute_args=execute_args,
        fetch_task=lambda t: client.call("tasks.get_by_id", {"task": t})["task"])
    host = cfg.get("agent.worker_name") or socket.gethostname()
    env = {"CLEARML_WORKER_ID": os.environ.get("CLEARML_WORKER_ID") or f"{host}:{os.getpid()}"}
    if os.environ.get("CONVEYOR_UNDER_DAEMON") == "1":
        env["CONVEYOR_UNDER_DAEMON"] = "1"
    if git_user:
        env["CLEARML_AGENT_GIT_USER"] = git_user
    if git_pass:
        env["CLEARML_AGENT_GIT_PASS"] = git_pass
    settle = "--clone" not in execute_args  # with --clone the task itself is only copied, never run
    try:
        proc = runtime.launch(TaskRun(task_id), env)
    except LaunchError as exc:
        _fail(client, task_id, str(exc), settle, exc.failure_class)
        return 1

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("%s: stopping container %s", signal.Signals(signum).name, proc.command.name)
        proc.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = proc.wait()
    if proc.start_failure:
        _fail(client, task_id, proc.start_failure, settle, of_image(proc.start_failure).value)
        return 1
    return 0 if code == 0 else 1


def _fail(client: ApiCaller, task_id: str, reason: str, settle: bool,
          failure_class: str = FailureClass.infrastructure.value) -> None:
    """The container could not start: the task fails with the engine's reason, the infrastructure's failure unless
    the launch said otherwise (an image that does not exist), and the server retries it as `retries` allow."""
    log.error("task %s: %s", task_id, reason)
    if not settle:
        return
    # straight to failed, never through tasks.dequeue first: a dequeue takes a running (or queued) task back to
    # `created`, and a failure from `created` is no run's, so its class would be dropped and no retry made. The
    # server takes a queued task off its queue as it fails it, and records the failure as an attempt.
    try:
        client.call("tasks.failed", {"task": task_id, "force": True, "status_reason": reason,
                                     FAILURE_CLASS: failure_class})
    except ConveyorError as exc:
        log.warning("task %s: could not mark it failed: %s", task_id, exc)
