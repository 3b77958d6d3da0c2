"""Machine stats for `workers.status_report`, in the reference agent's units (MB, MB/s, % free)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil

from conveyor.agent.gpus import GpuInventory

log = logging.getLogger(__name__)


class MachineMonitor:
    """Rates (disk, network) are measured between two calls of `sample()`."""

    def __init__(self, gpus: GpuInventory | None = None, disk_path: str | None = None):
        self.gpus = gpus or GpuInventory()
        self.disk_path = disk_path or os.path.expanduser("~")
        self._last = self._counters()
        psutil.cpu_percent(None)  # prime: the first call of cpu_percent always answers 0

    @staticmethod
    def _counters() -> tuple[float, Any, Any]:
        try:
            disk = psutil.disk_io_counters()
        except Exception:  # containers without /proc/diskstats
            log.debug("no disk counters", exc_info=True)
            disk = None
        return time.monotonic(), disk, psutil.net_io_counters()

    def sample(self) -> dict[str, Any]:
        now, disk, net = self._counters()
        then, disk0, net0 = self._last
        self._last = (now, disk, net)
        span = max(now - then, 1e-3)
        mem = psutil.virtual_memory()
        stats: dict[str, Any] = {
            "cpu_usage": [psutil.cpu_percent(None)],
            "memory_used": (mem.total - mem.available) / 2**20,
            "memory_free": mem.available / 2**20,
            "disk_free_home": 100.0 - psutil.disk_usage(self.disk_path).percent,
            "disk_read": ((disk.read_bytes - disk0.read_bytes) / 2**20 / span) if disk and disk0 else 0.0,
            "disk_write": ((disk.write_bytes - disk0.write_bytes) / 2**20 / span) if disk and disk0 else 0.0,
            "network_rx": (net.bytes_recv - net0.bytes_recv) / 2**20 / span,
            "network_tx": (net.bytes_sent - net0.bytes_sent) / 2**20 / span,
        }
        try:
            temps = psutil.sensors_temperatures()
        except Exception:  # no sensors readable here
            log.debug("no temperature sensors", exc_info=True)
            temps = {}
        core = [t.current for t in temps.get("coretemp", []) if t.current]
        if core:
            stats["cpu_temperature"] = [max(core)]
        gpus = self.gpus.readings()
        if gpus:
            stats["gpu_usage"] = [g.utilization for g in gpus]
            stats["gpu_memory_used"] = [g.memory_used_mb for g in gpus]
            stats["gpu_memory_free"] = [g.memory_total_mb - g.memory_used_mb for g in gpus]
            stats["gpu_temperature"] = [g.temperature for g in gpus]
        return stats
