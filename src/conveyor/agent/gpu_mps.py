"""A hard limit for fractional GPU tasks (`agent.gpu_fractions.enforce: mps`): the task runs as an NVIDIA MPS client,
whose server refuses allocations past `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` and gives it at most
`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` of the GPU's cores. The agent starts the MPS control daemon when none runs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import psutil

from conveyor.agent.gpu_allocation import Allocation
from conveyor.errors import UserError

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"


def fraction_env(allocation: Allocation) -> dict[str, str]:
    """What the reference exports to a fractional task, MPS or not."""
    return {"CLEARML_AGENT_GPU_FRACTIONS": f"{allocation.fraction:g}"} if allocation.share else {}


def mps_env(allocation: Allocation, memory_total_mb: float, pipe_dir: str) -> dict[str, str]:
    """The MPS client settings for a task holding `allocation` of a GPU with `memory_total_mb`. The task sees only
    its GPU, so the memory limit is for device 0 of what it sees."""
    if not allocation.share:
        return {}
    return {"CUDA_MPS_PIPE_DIRECTORY": pipe_dir,
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={int(memory_total_mb * allocation.fraction)}M",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(int(allocation.fraction * 100))}


def ensure_control_daemon(gpus: list[str], pipe_dir: str) -> None:
    """Start `nvidia-cuda-mps-control -d` for `gpus` unless one runs. Raises UserError when MPS is not installed."""
    binary = shutil.which(CONTROL)
    if binary is None:
        raise UserError(f"agent.gpu_fractions.enforce is mps, but {CONTROL} is not on PATH",
                        hint="install NVIDIA's CUDA MPS (part of the driver utilities), or set "
                             "agent.gpu_fractions.enforce: watchdog")
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == CONTROL:
            log.info("MPS control daemon already running (pid %d)", proc.pid)
            return
    os.makedirs(pipe_dir, exist_ok=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(g.replace(".", ":") for g in gpus),
           "CUDA_MPS_PIPE_DIRECTORY": pipe_dir, "CUDA_MPS_LOG_DIRECTORY": pipe_dir}
    done = subprocess.run([binary, "-d"], env=env, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise UserError(f"{CONTROL} -d failed (exit code {done.returncode}): {done.stderr.strip()}")
    log.info("started the MPS control daemon for GPU %s (pipes in %s)", ",".join(gpus), pipe_dir)
