"""The watchdog of fractional GPU tasks: a task that holds 0.25 of a GPU may use a quarter of its memory. Without a
hard limit (MPS) nothing stops a task from taking more, so the agent reads what each process holds on the GPU, sums
it over the task's process tree, warns the task at 90 % of its share and stops it once it has been above its share
for longer than `agent.gpu_fractions.grace_sec`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from conveyor.agent.gpu_allocation import Allocation
from conveyor.agent.gpu_processes import GIB
from conveyor.agent.gpus import GpuReading

log = logging.getLogger(__name__)

WARN_AT = 0.9  # of the share


@dataclass(frozen=True)
class Verdict:
    task_id: str
    stop: bool  # False: a warning for the task's log
    message: str


@dataclass
class _Watch:
    over_since: float | None = None
    warned: bool = False


@dataclass
class GpuWatchdog:
    grace_sec: float
    _watches: dict[str, _Watch] = field(default_factory=dict)

    def check(self, held: Mapping[str, Allocation], owners: Mapping[int, str], readings: Iterable[GpuReading],
              now: float | None = None) -> list[Verdict]:
        """What to do about the tasks in `held` that hold a share of a GPU (`owners`: pid -> task id)."""
        now = time.monotonic() if now is None else now
        by_gpu = {str(r.index): r for r in readings}
        verdicts: list[Verdict] = []
        for task_id in list(self._watches):
            if task_id not in held:
                del self._watches[task_id]
        for task_id, allocation in held.items():
            reading = by_gpu.get(allocation.gpus[0])
            if not allocation.share or reading is None or not reading.memory_total_mb:
                continue
            used = sum(p.used_memory_mb for p in reading.processes if owners.get(p.pid) == task_id)
            allowed = reading.memory_total_mb * allocation.fraction
            watch = self._watches.setdefault(task_id, _Watch())
            share = f"its {allocation.fraction:g} of GPU {allocation.gpus[0]} allows"
            if used > allowed:
                watch.over_since = now if watch.over_since is None else watch.over_since
                if now - watch.over_since >= self.grace_sec:
                    verdicts.append(Verdict(task_id, True, f"GPU memory limit: used {used / GIB:.1f} GiB of the "
                                                           f"{allowed / GIB:.1f} GiB {share}"))
                    del self._watches[task_id]
                    continue
            else:
                watch.over_since = None
            if used >= WARN_AT * allowed and not watch.warned:
                watch.warned = True
                verdicts.append(Verdict(task_id, False, f"conveyor: warning: the task uses {used / GIB:.1f} GiB of "
                                                        f"GPU memory, {used / allowed:.0%} of the {allowed / GIB:.1f} "
                                                        f"GiB {share}; above it for {self.grace_sec:g} s it is "
                                                        "stopped"))
        return verdicts
