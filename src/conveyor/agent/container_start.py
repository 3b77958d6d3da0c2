"""The first code that runs in a task's container, from Conveyor's bundle (runtimes/bundle.py), whatever the image:

    /opt/conveyor/lib/ld-linux-x86-64.so.2 ... python3.11 -I -u /opt/conveyor/start.py conveyor.agent.container_start
        execute --id T ...

1. the bundle's git goes first on PATH (the image needs none; the task sees it too);
2. what the image lacks, a Python 3.8+ for the task and the opencv libraries, is installed with the image's package
   manager (image_packages.py): its output goes to the task's log, a failure fails the task with the reason;
3. the image's Python is named as the task's interpreter (env/python.py's TASK_PYTHON_ENV): the task runs with it,
   never with the bundle's;
4. the conveyor command (`execute`, or `build` in `conveyor build --docker`) runs in this same process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import conveyor
from conveyor.agent import image_packages
from conveyor.agent.image_packages import ImageEnvError
from conveyor.agent.logs import send_line
from conveyor.config import Config, ConfigError, load_config
from conveyor.env.python import TASK_PYTHON_ENV, TASK_PYTHON_VERSION_ENV
from conveyor.errors import ConveyorError
from conveyor.progress import Log
from conveyor.protocol.failure import FIELD as FAILURE_CLASS
from conveyor.protocol.failure import FailureClass
from conveyor.protocol.status import STOPPING, TaskStatus

log = logging.getLogger("conveyor.agent.container_start")

# Set by the abort watch before it ends the package manager, whose failure must then not be reported as the task's
# (a `tasks.failed` racing the watch's `tasks.stopped` made an aborted task `failed`); the watch exits the process
# once it has reported the stop, or the set-up gives up waiting for it after STOP_REPORT_SEC.
_STOPPING = threading.Event()
STOP_REPORT_SEC = 120.0


def main(argv: Sequence[str]) -> int:
    bundle = Path(conveyor.__file__).resolve().parents[2]  # <bundle>/site/conveyor/__init__.py
    image_path = os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if (bundle / "bin" / "git").exists():
        os.environ["PATH"] = f"{bundle / 'bin'}{os.pathsep}{image_path}"
    cfg: Config | None = None
    try:
        cfg = load_config()
        with _abort_watch(cfg, argv):
            python = prepare_image(cfg, image_path, argv)
    except (ImageEnvError, ConfigError) as exc:
        if _STOPPING.is_set():  # the abort ended the package manager: the watch reports the stop and exits
            time.sleep(STOP_REPORT_SEC)  # the watch's os._exit ends the process before this does
            return 1
        return _fail(cfg, argv, f"container set-up failed: {exc}")
    os.environ[TASK_PYTHON_ENV] = python.path
    os.environ[TASK_PYTHON_VERSION_ENV] = python.version
    from conveyor.cli.main import main as conveyor_main

    return conveyor_main(list(argv))


def prepare_image(cfg: Config, image_path: str, argv: Sequence[str]) -> image_packages.ImagePython:
    """The image's Python for the task, after installing what the image lacks. Raises ImageEnvError."""
    plan = image_packages.plan(image_path, opencv=bool(cfg.get("agent.docker_install_opencv_libs")),
                               pip=cfg.get("agent.package_manager.type") == "pip")
    if plan.packages and plan.manager:
        with _output(cfg, argv) as out:
            why = ("no Python 3.8+ in the image" if plan.python is None else "uv needs distutils for Python "
                   f"{plan.python.version}" if plan.python.lacks_distutils else "agent.docker_install_opencv_libs")
            out(f"conveyor: installing {' '.join(plan.packages)} in the image with {plan.manager} ({why})")
            image_packages.install(plan.manager, plan.packages, out)
            if plan.python is None:
                found = plan.python = image_packages.find_python(image_path)
                extra = image_packages.DISTUTILS.get(plan.manager, []) if found and found.lacks_distutils else []
                if found and extra:
                    out(f"conveyor: installing {' '.join(extra)} (uv needs distutils for Python {found.version})")
                    image_packages.install(plan.manager, extra, out, update=False)
                    plan.python = image_packages.find_python(image_path)
    if plan.python is None:
        raise ImageEnvError(f"no Python 3.8 or newer in the image after installing {' '.join(plan.packages)}")
    return plan.python


def _task_id(argv: Sequence[str]) -> str | None:
    """The task whose log shows the set-up: execute's --id, unless --clone makes a new task from it."""
    args = list(argv)
    if not args or args[0] != "execute" or "--clone" in args:
        return None
    for i, arg in enumerate(args):
        if arg == "--id" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--id="):
            return arg.split("=", 1)[1]
    return None


@contextlib.contextmanager
def _output(cfg: Config, argv: Sequence[str]) -> Iterator[Log]:
    """Lines to stdout and, for `execute`, to the task's log."""
    task = _task_id(argv)
    shipper = None
    if task:
        from conveyor.agent.logs import LogShipper
        from conveyor.agent.session import agent_client

        shipper = LogShipper(agent_client(cfg), task, os.environ.get("CLEARML_WORKER_ID", ""),
                             flush_interval=float(cfg.get("agent.log_flush_interval_sec")),
                             max_bytes=int(cfg.get("agent.log_buffer_max_bytes")))

    def out(line: str) -> None:
        _say(line)
        if shipper is not None:
            shipper.write(line + "\n")

    try:
        yield out
    finally:
        if shipper is not None:
            shipper.close(timeout=float(cfg.get("agent.log_flush_timeout_sec")))


@contextlib.contextmanager
def _abort_watch(cfg: Config, argv: Sequence[str]) -> Iterator[None]:
    """While the image is being prepared (apt can take minutes), an abort is honoured as `execute` honours it later:
    the package manager is ended, the task marked stopped, the container exits."""
    task = _task_id(argv)
    if not task:
        yield
        return
    from conveyor.agent.process import end_orphans
    from conveyor.agent.session import agent_client

    done = threading.Event()
    waits_in_queue = "--require-queue" in argv

    def watch() -> None:
        client = agent_client(cfg)
        while not done.wait(float(cfg.get("agent.abort_poll_interval_sec"))):
            try:
                found = client.call("tasks.get_all", {"id": [task], "only_fields": ["status", "status_message"],
                                                      "search_hidden": True})["tasks"]
            except ConveyorError as exc:  # the server is out of reach for now: the set-up goes on
                log.debug("task %s: could not read its status: %s", task, exc)
                continue
            status = found[0].get("status") if found else None
            if found and status == TaskStatus.in_progress and STOPPING not in (found[0].get("status_message") or ""):
                continue
            if found and status == TaskStatus.queued and waits_in_queue:
                continue  # a glue's pod: the task stays queued until `execute --require-queue` takes it
            reason = "task was stopped by tasks.stop" if status == TaskStatus.in_progress else \
                f"the task's status changed to {status or 'deleted'} elsewhere"
            _say(f"conveyor: stopping the container set-up: {reason}")
            _STOPPING.set()
            try:
                end_orphans(float(cfg.get("agent.kill_grace_sec")))
                if status == TaskStatus.in_progress:
                    send_line(client, task, os.environ.get("CLEARML_WORKER_ID", ""),
                              f"conveyor: stopped during the container set-up: {reason}\n", "error")
                    client.call("tasks.stopped", {"task": task, "force": True, "status_reason": reason})
            except Exception as exc:  # noqa: BLE001 - logged; the set-up waits for this thread's exit below
                log.warning("task %s: could not mark it stopped: %s", task, exc)
            finally:
                os._exit(1)

    threading.Thread(target=watch, name="abort-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _fail(cfg: Config | None, argv: Sequence[str], reason: str) -> int:
    _say(f"conveyor: {reason}")
    task = _task_id(argv)
    if task and cfg is not None:
        from conveyor.agent.session import agent_client

        client = agent_client(cfg)
        try:
            send_line(client, task, os.environ.get("CLEARML_WORKER_ID", ""), f"conveyor: {reason}\n", "error")
        except ConveyorError as exc:
            log.warning("task %s: could not add to its log: %s", task, exc)
        try:
            # the container's set-up (inside a started container, before the task's code): the machine's fault;
            # straight to failed (a tasks.dequeue first took a started task back to `created`, and a failure from
            # `created` is no run's: no class, no retry)
            client.call("tasks.failed", {"task": task, "force": True, "status_reason": reason[:1000],
                                         FAILURE_CLASS: FailureClass.infrastructure.value})
        except ConveyorError as exc:
            log.warning("task %s: could not mark it failed: %s", task, exc)
    return 1


def _say(line: str) -> None:
    """The set-up's own lines on the container's output, which the agent's terminal shows."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
