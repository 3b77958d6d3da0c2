"""What the daemon asks about GPUs, in one place: may it pull now (are its GPUs free of other people's processes,
does a queue's request fit), which GPUs does a task get and what does it see, and which fractional task has gone
past its share of memory. The daemon holds one when it was given GPUs (`--gpus`, `--dynamic-gpus`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from conveyor.agent.gpu_allocation import Allocation, DynamicGpus, GpuRequest, allocation_of, parse_gpu_ids
from conveyor.agent.gpu_mps import ensure_control_daemon, fraction_env, mps_env
from conveyor.agent.gpu_processes import busy_gpus, task_of_pid
from conveyor.agent.gpu_watchdog import GpuWatchdog, Verdict
from conveyor.agent.gpus import GpuInventory, GpuReading
from conveyor.config import Config

log = logging.getLogger(__name__)


class GpuBroker:
    def __init__(self, cfg: Config, inventory: GpuInventory, gpus: str | None,
                 dynamic: dict[str, GpuRequest] | None = None):
        self.inventory = inventory
        self.threshold_mb = float(cfg.get("agent.gpu_foreign_memory_threshold_mb"))
        self.mps = str(cfg.get("agent.gpu_fractions.enforce")) == "mps"
        self.mps_pipe_dir = str(cfg.get("agent.gpu_fractions.mps_pipe_directory"))
        self.watchdog = GpuWatchdog(float(cfg.get("agent.gpu_fractions.grace_sec")))
        self.gpus: list[str] | None = None if gpus in (None, "all") else (
            parse_gpu_ids(gpus) if dynamic is not None else [g.strip() for g in str(gpus).split(",")])
        self.dynamic = None if dynamic is None else DynamicGpus(self.gpus or [], dynamic,
                                                                bool(cfg.get("agent.dynamic_gpus_backfill")))

    def bind(self, queue_names: dict[str, str]) -> None:
        """The daemon's queues, once resolved (id -> name)."""
        if self.dynamic is not None:
            self.dynamic.bind(queue_names)

    def prepare(self) -> None:
        """At start: the MPS control daemon when fractions are enforced through it (UserError if MPS is missing)."""
        if self.mps and self.dynamic is not None and any(r.share for r in self.dynamic.by_name.values()):
            ensure_control_daemon(self.gpus or [], self.mps_pipe_dir)

    def _readings(self) -> list[GpuReading]:
        return self.inventory.readings()

    def _busy(self, roots: Mapping[str, int]) -> dict[str, str]:
        readings = self._readings()
        return busy_gpus(readings, _owners(roots, readings), self.threshold_mb, self.gpus)

    # --- --gpus: one set of GPUs for every task ------------------------------------------------------------------
    def wait_reason(self, roots: Mapping[str, int]) -> str | None:
        """Why the daemon must not pull now: one of its GPUs holds others' memory. None: go ahead."""
        busy = self._busy(roots)
        return "waiting: " + "; ".join(busy.values()) if busy else None

    # --- --dynamic-gpus -------------------------------------------------------------------------------------------
    def queues_now(self, order: list[str], has_waiting: Callable[[str], bool], roots: Mapping[str, int],
                   names: dict[str, str]) -> tuple[list[str], str | None]:
        assert self.dynamic is not None
        busy = self._busy(roots)
        eligible, reason = self.dynamic.candidates(order, has_waiting, set(busy), names)
        if reason and busy:
            reason += " (" + "; ".join(busy.values()) + ")"
        return eligible, reason

    def take(self, task_id: str, queue_id: str, roots: Mapping[str, int]) -> Allocation | None:
        assert self.dynamic is not None
        return self.dynamic.pool.take(task_id, self.dynamic.by_queue[queue_id], set(self._busy(roots)))

    def adopt(self, task_id: str, sub_worker: str | None) -> None:
        """A task a previous daemon started keeps the GPUs its sub-worker id names."""
        allocation = allocation_of(sub_worker or "")
        if self.dynamic is not None and allocation is not None:
            self.dynamic.pool.hold(task_id, allocation)
            log.info("task %s keeps %s (adopted)", task_id, allocation.suffix)

    def release(self, task_id: str) -> None:
        if self.dynamic is not None:
            self.dynamic.pool.release(task_id)

    def env(self, allocation: Allocation) -> dict[str, str]:
        """What the task's executor sees: only its GPUs, and its share."""
        env = {"NVIDIA_VISIBLE_DEVICES": allocation.visible, "CUDA_VISIBLE_DEVICES": allocation.visible,
               **fraction_env(allocation)}
        if self.mps and allocation.share:
            total = next((r.memory_total_mb for r in self._readings() if str(r.index) == allocation.gpus[0]), 0.0)
            env.update(mps_env(allocation, total, self.mps_pipe_dir))
        return env

    def watch(self, roots: Mapping[str, int]) -> list[Verdict]:
        """Fractional tasks over their share of memory (always on: MPS or not)."""
        if self.dynamic is None or not any(a.share for a in self.dynamic.pool.held.values()):
            return []
        readings = self._readings()
        return self.watchdog.check(self.dynamic.pool.held, _owners(roots, readings), readings)


def _owners(roots: Mapping[str, int], readings: list[GpuReading]) -> dict[int, str]:
    return task_of_pid(roots, (p.pid for r in readings for p in r.processes))
