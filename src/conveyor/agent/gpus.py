"""GPU inventory: NVML when a GPU and its driver are present, else a fake inventory for machines without one.

`CONVEYOR_FAKE_GPUS` names a JSON file (or holds JSON) listing devices, so that GPU code is testable here:
`[{"index": 0, "uuid": "GPU-0", "name": "Fake H100", "memory_total_mb": 81920, "memory_used_mb": 0,
"utilization": 0, "temperature": 30}]`. The file is re-read on every sample, so a test can change readings.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class GpuReading:
    index: int
    uuid: str
    name: str
    memory_total_mb: float
    memory_used_mb: float
    utilization: float
    temperature: float


def _fake() -> list[GpuReading] | None:
    spec = os.environ.get("CONVEYOR_FAKE_GPUS")
    if not spec:
        return None
    text = spec if spec.lstrip().startswith("[") else Path(spec).read_text()
    return [GpuReading(int(d["index"]), str(d.get("uuid", f"GPU-{d['index']}")), str(d.get("name", "fake")),
                       float(d.get("memory_total_mb", 0)), float(d.get("memory_used_mb", 0)),
                       float(d.get("utilization", 0)), float(d.get("temperature", 0))) for d in json.loads(text)]


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
                                      float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))))
            return out
        except Exception:  # no driver, no library, a device that vanished: NVML's errors are of many kinds
            self._failures += 1
            log.debug("GPU readings failed (%d of 3 tries)", self._failures, exc_info=True)
            return []

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
