"""Ending a process tree: SIGTERM to every descendant (its session and any that left it), SIGKILL after a grace."""

from __future__ import annotations

import contextlib
import ctypes
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


# Linux prctl options (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def become_subreaper() -> bool:
    """Make this process the one that inherits every orphaned descendant (Linux), instead of init: a task's
    `setsid` or double-forked grandchildren stay findable as our children, whatever session they started."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the process that started it dies (SIGKILLed executor or daemon)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def end_orphans(grace: float, keep: frozenset[int] = frozenset()) -> int:
    """End every descendant of this process but those in `keep` (and their trees): SIGTERM, SIGKILL after `grace`.
    As a subreaper, this is what a finished task left running. Returns how many there were."""
    me = psutil.Process()
    procs = []
    for child in me.children(recursive=False):
        if child.pid in keep:
            continue
        procs.append(child)
        with contextlib.suppress(psutil.Error):
            procs.extend(child.children(recursive=True))
    if not procs:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(procs)
