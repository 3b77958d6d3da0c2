"""Ending a process tree: SIGTERM to every descendant (its session and any that left it), SIGKILL after a grace."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, grace: float) -> None:
    """Ask the whole tree to stop, then kill what is left after `grace` seconds. Grandchildren are found both
    through the process group (the task was started in its own session) and by walking children, since a
    grandchild may have started a session of its own."""
    procs = _tree(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    # Children may have spawned more while dying: look again.
    alive = list({p.pid: p for p in alive + _tree(pid)}.values())
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
