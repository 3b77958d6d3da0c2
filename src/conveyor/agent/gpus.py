"""GPU inventory: NVML when a GPU and its driver are present, else a fake inventory for machines without one.

`CONVEYOR_FAKE_GPUS` names a JSON file (or holds JSON) listing devices, so that GPU code is testable here:
`[{"index": 0, "uuid": "GPU-0", "name": "Fake H100", "memory_total_mb": 81920, "memory_used_mb": 0,
"utilization": 0, "temperature": 30, "processes": [{"pid": 1234, "used_memory_mb": 3200}]}]`. The file is re-read on
every sample, so a test can change readings (a test task can write its own pid and memory into it). `processes`
mirrors NVML's nvmlDeviceGetComputeRunningProcesses: what each process holds of the device's memory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_mb: float


@dataclass
class GpuReading:
    index: int
    uuid: str
    name: str
    memory_total_mb: float
    memory_used_mb: float
    utilization: float
    temperature: float
    processes: list[GpuProcess] = field(default_factory=list)


def _fake() -> list[GpuReading] | None:
    spec = os.environ.get("CONVEYOR_FAKE_GPUS")
    if not spec:
        return None
    try:
        text = spec if spec.lstrip().startswith("[") else Path(spec).read_text()
        devices = json.loads(text)
    except (OSError, ValueError) as exc:  # a test rewriting the file mid-read: this sample has no readings
        log.warning("CONVEYOR_FAKE_GPUS could not be read: %s", exc)
        return []
    return [GpuReading(int(d["index"]), str(d.get("uuid", f"GPU-{d['index']}")), str(d.get("name", "fake")),
                       float(d.get("memory_total_mb", 0)), float(d.get("memory_used_mb", 0)),
                       float(d.get("utilization", 0)), float(d.get("temperature", 0)),
                       [GpuProcess(int(p["pid"]), float(p.get("used_memory_mb", 0))) for p in d.get("processes") or []])
            for d in devices]


class GpuInventory:
    """Reads the visible GPUs; NVML failures switch GPU readings off after three tries, as the reference does."""

    def __init__(self, visible: str | None = None):
        self.visible = visible  # NVIDIA_VISIBLE_DEVICES-style: "0,1", "all", "none", or None for all
        self._nvml: Any = None  # the pynvml module, once loaded
        self._failures = 0

    def _nvml_readings(self) -> list[GpuReading]:
        if self._failures >= 3:
            return []
        try:
            if self._nvml is None:
                import pynvml  # nvidia-ml-py

                pynvml.nvmlInit()
                self._nvml = pynvml
            nv = self._nvml
            out = []
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                try:
                    util = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                except nv.NVMLError:
                    util = 100.0  # MIG devices have no utilization reading: the reference reports 100
                name = nv.nvmlDeviceGetName(h)
                out.append(GpuReading(i, nv.nvmlDeviceGetUUID(h), name if isinstance(name, str) else name.decode(),
                                      mem.total / 2**20, mem.used / 2**20, util,
                                      float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                                      self._processes(h)))
            return out
        except Exception:  # no driver, no library, a device that vanished: NVML's errors are of many kinds
            self._failures += 1
            log.debug("GPU readings failed (%d of 3 tries)", self._failures, exc_info=True)
            return []

    def _processes(self, handle: Any) -> list[GpuProcess]:
        nv = self._nvml
        try:
            found = nv.nvmlDeviceGetComputeRunningProcesses(handle)
        except nv.NVMLError as exc:  # e.g. MIG without permission: no readings of its processes
            log.debug("GPU processes could not be read: %s", exc)
            return []
        # usedGpuMemory is None where the driver does not say (Windows WDDM, some containers)
        return [GpuProcess(int(p.pid), (p.usedGpuMemory or 0) / 2**20) for p in found]

    def readings(self) -> list[GpuReading]:
        if self.visible in ("none", ""):
            return []
        devices = _fake()
        if devices is None:
            devices = self._nvml_readings()
        if self.visible and self.visible != "all":
            wanted = {v.strip() for v in self.visible.split(",")}
            devices = [d for d in devices if str(d.index) in wanted or d.uuid in wanted]
        return devices
