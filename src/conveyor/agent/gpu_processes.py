"""Whose GPU memory is whose: the processes of each running task (its executor's process tree) and everyone else's.
An agent takes a task for a GPU only when processes not its own hold less than
`agent.gpu_foreign_memory_threshold_mb` there (another user's job, a notebook someone left open)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import psutil

from conveyor.agent.gpus import GpuReading

log = logging.getLogger(__name__)

GIB = 1024.0  # MB per GiB, as NVML counts


def task_of_pid(roots: Mapping[str, int], gpu_pids: Iterable[int] = ()) -> dict[int, str]:
    """pid -> task id, over each task's executor (`roots`: task id -> executor pid) and all its descendants. A
    process on a GPU outside those trees (in a container its parent is the engine, not the executor) is the task's
    when its environment names it (CLEARML_TASK_ID, set for every task's processes)."""
    owners: dict[int, str] = {}
    for task_id, pid in roots.items():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue  # ended between the poll and now: nothing of it left to count
        owners.update({p.pid: task_id for p in tree})
    for pid in set(gpu_pids) - set(owners):
        try:
            named = psutil.Process(pid).environ().get("CLEARML_TASK_ID")
        except psutil.Error:  # gone, or another user's: not ours
            continue
        if named is not None and named in roots:
            owners[pid] = named
    return owners


def busy_gpus(readings: Iterable[GpuReading], own_pids: Iterable[int], threshold_mb: float,
              among: Iterable[str] | None = None) -> dict[str, str]:
    """GPU id -> why it is not free ("GPU 1 has 3.2 GiB used by pid 1234"), for the GPUs (all, or `among`) where
    processes other than `own_pids` hold at least `threshold_mb`."""
    own = set(own_pids)
    wanted = None if among is None else set(among)
    busy: dict[str, str] = {}
    for reading in readings:
        gpu = str(reading.index)
        if wanted is not None and gpu not in wanted:
            continue
        foreign = [p for p in reading.processes if p.pid not in own]
        used = sum(p.used_memory_mb for p in foreign)
        if foreign and used >= threshold_mb:
            pids = ", ".join(str(p.pid) for p in sorted(foreign, key=lambda p: -p.used_memory_mb)[:3])
            busy[gpu] = f"GPU {gpu} has {used / GIB:.1f} GiB used by pid {pids}"
    return busy
