"""GPU check on a machine with an NVIDIA GPU: real tasks through a real server and a real daemon.

    python bench/gpu_check.py [--gpu 0] [--timeout 240]

1. NVML: the inventory and its per-process readings (what `CONVEYOR_FAKE_GPUS` stands in for in the tests).
2. Two `half_gpu=0.5` tasks share one GPU (`--dynamic-gpus`), each allocating a third of its memory with torch:
   both run at once, each sees only that GPU, the watchdog leaves them alone.
3. The watchdog: a `quarter_gpu=0.25` task that allocates past its quarter is stopped with the memory reason.
4. MPS (only where `nvidia-cuda-mps-control` exists): with `agent.gpu_fractions.enforce: mps`, a quarter task that
   tries to allocate past its share gets an out-of-memory error from CUDA itself.

The tasks use the torch of the Python that runs this script (their venvs see its site packages). Prints each check's
result and figures; exits 0 when all ran checks passed, 1 if one failed, 2 with a message when there is no GPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentkit import DaemonProcess, agent_env, create_task, enqueue, log_text, wait_final, wait_status  # noqa: E402
from conftest import ServerProcess  # noqa: E402
from conveyor.agent.gpus import GpuInventory  # noqa: E402

# Allocates `fraction` of the GPU's memory, says how much and where, holds it for `seconds`.
ALLOCATE = """import os, sys, time
import torch
fraction, seconds = float(sys.argv[1]), float(sys.argv[2])
total = torch.cuda.get_device_properties(0).total_memory
try:
    block = torch.empty(int(total * fraction), dtype=torch.uint8, device="cuda")
    block.fill_(1)
    torch.cuda.synchronize()
    print("allocated", round(block.numel() / 2**30, 2), "GiB on", os.environ.get("CUDA_VISIBLE_DEVICES"),
          "pid", os.getpid(), flush=True)
except torch.cuda.OutOfMemoryError as exc:
    print("out of memory:", str(exc).splitlines()[0], flush=True)
    sys.exit(3)
time.sleep(seconds)
"""


def task(client, name: str, fraction: float, seconds: float) -> str:  # noqa: ANN001
    return create_task(client, name=name, repository="", diff=ALLOCATE, entry_point=f"alloc.py {fraction} {seconds}")


def check_nvml(gpu: str) -> bool:
    readings = GpuInventory(gpu).readings()
    if not readings:
        print("NVML: no reading of GPU", gpu)
        return False
    r = readings[0]
    print(f"NVML: GPU {r.index} {r.name} ({r.uuid}): {r.memory_used_mb:.0f} of {r.memory_total_mb:.0f} MB used, "
          f"{r.utilization:.0f} % busy, {r.temperature:.0f} C, {len(r.processes)} compute process(es)")
    return True


def run_daemon(server: ServerProcess, root: Path, gpu: str, queue: str, **settings: str) -> DaemonProcess:
    env = agent_env(server, root, CLEARML_AGENT__AGENT__PACKAGE_MANAGER__SYSTEM_SITE_PACKAGES="true",
                    CLEARML_AGENT__AGENT__GPU_FRACTIONS__GRACE_SEC="3", **settings)
    return DaemonProcess(server, root, "--dynamic-gpus", "--gpus", gpu, "--queue", queue, "--create-queue", env=env)


def check_sharing(server: ServerProcess, root: Path, gpu: str, timeout: float) -> bool:
    client = server.client()
    daemon = run_daemon(server, root / "share", gpu, "half_gpu=0.5")
    try:
        tasks = [task(client, f"half-{i}", 0.33, 20) for i in range(2)]
        started = time.time()
        for t in tasks:
            enqueue(client, t, "half_gpu")
        for t in tasks:
            wait_status(client, t, "in_progress", timeout=timeout)
        both = time.time() - started
        docs = [wait_final(client, t, timeout=timeout) for t in tasks]
        lines = [next((line for line in log_text(client, t).splitlines() if line.startswith("allocated")), "-")
                 for t in tasks]
        overlap = docs[0]["started"] < docs[1]["completed"] and docs[1]["started"] < docs[0]["completed"]
        ok = all(d["status"] == "completed" for d in docs) and overlap and all(f"on {gpu} " in x for x in lines)
        print(f"half_gpu x2: {'PASS' if ok else 'FAIL'}: both running {both:.1f} s after enqueue, side by side: "
              f"{overlap}; " + "; ".join(lines) + "; statuses " + ", ".join(d["status"] for d in docs))
        return ok
    finally:
        daemon.stop()


def check_watchdog(server: ServerProcess, root: Path, gpu: str, timeout: float) -> bool:
    client = server.client()
    daemon = run_daemon(server, root / "watchdog", gpu, "quarter_gpu=0.25")
    try:
        t = task(client, "greedy", 0.4, 120)
        enqueue(client, t, "quarter_gpu")
        started = time.time()
        doc = wait_final(client, t, timeout=timeout)
        ok = doc["status"] == "stopped" and doc.get("status_reason", "").startswith("GPU memory limit")
        print(f"watchdog: {'PASS' if ok else 'FAIL'}: {doc['status']} after {time.time() - started:.1f} s: "
              f"{doc.get('status_reason')}")
        return ok
    finally:
        daemon.stop()


def check_mps(server: ServerProcess, root: Path, gpu: str, timeout: float) -> bool | None:
    if shutil.which("nvidia-cuda-mps-control") is None:
        print("MPS: skipped (no nvidia-cuda-mps-control)")
        return None
    client = server.client()
    daemon = run_daemon(server, root / "mps", gpu, "quarter_gpu=0.25",
                        CLEARML_AGENT__AGENT__GPU_FRACTIONS__ENFORCE="mps")
    try:
        within, beyond = task(client, "within", 0.15, 1), task(client, "beyond", 0.4, 1)
        for t in (within, beyond):
            enqueue(client, t, "quarter_gpu")
        docs = {name: wait_final(client, t, timeout=timeout) for name, t in (("within", within), ("beyond", beyond))}
        refused = "out of memory" in log_text(client, beyond)
        ok = docs["within"]["status"] == "completed" and refused
        print(f"MPS: {'PASS' if ok else 'FAIL'}: within its share {docs['within']['status']}; past it "
              f"{docs['beyond']['status']} (CUDA refused the allocation: {refused})")
        return ok
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="0", help="the GPU to use (index)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds a check may take")
    args = parser.parse_args()
    if not Path("/dev/nvidiactl").exists() or not GpuInventory(args.gpu).readings():
        print("no NVIDIA GPU here (no /dev/nvidiactl or no NVML reading): nothing to check", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401 - the tasks need it
    except ImportError:
        print("the tasks allocate GPU memory with torch: install it into this Python first", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="conveyor-gpu-check-"))
    server = ServerProcess(root / "home").start()
    started = time.time()
    try:
        results = [check_nvml(args.gpu), check_sharing(server, root, args.gpu, args.timeout),
                   check_watchdog(server, root, args.gpu, args.timeout),
                   check_mps(server, root, args.gpu, args.timeout)]
    finally:
        server.stop()
    ran = [r for r in results if r is not None]
    print(f"{sum(ran)} of {len(ran)} checks passed in {time.time() - started:.0f} s (files in {root})")
    return 0 if all(ran) else 1


if __name__ == "__main__":
    sys.exit(main())
