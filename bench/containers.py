"""Container benchmark: enqueue → the task's first printed line, with a warm image and warm caches, Docker (or
Podman) mode against venv mode on the same task and the same server, measured in the same run.

    python bench/containers.py [--tasks 15] [--engine docker|podman|both] [--image conveyor/base:bookworm]

The task prints `first <time.time()>` as its first line; the latency is that time minus the time just before
`tasks.enqueue` was sent (the container shares the host's clock). One daemon per mode, each on its own queue;
the modes take turns task by task, so that both see the same machine load. Target: Docker mode adds < 1 s.
The base image is built with .ci/images/build-base-image.sh when the engine does not have it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentkit import DaemonProcess, agent_env, create_task, enqueue, log_text, make_repo, wait_final  # noqa: E402
from conftest import ServerProcess  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pickup import FIRST, TRAIN, pct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one(client, bare: Path, queue: str, timeout: float) -> float:  # noqa: ANN001
    task = create_task(client, name=f"bench-{queue}", repository=f"file://{bare}", requirements="six==1.16.0\n")
    sent = time.time()
    enqueue(client, task, queue)
    doc = wait_final(client, task, timeout=timeout)
    text = log_text(client, task)
    match = FIRST.search(text)
    if doc["status"] != "completed" or not match:
        raise RuntimeError(f"task {task} on {queue} {doc['status']}: {doc.get('status_reason')}\n{text[-3000:]}")
    return float(match.group(1)) - sent


def describe(name: str, values: list[float]) -> str:
    q1, q3 = pct(values, 0.25), pct(values, 0.75)
    return (f"{name:<16} median {statistics.median(values) * 1000:6.0f} ms   IQR {q1 * 1000:.0f}–{q3 * 1000:.0f} ms   "
            f"min {min(values) * 1000:.0f}  max {max(values) * 1000:.0f} ms   (n={len(values)})")


def ensure_image(engine: str, image: str) -> None:
    if subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode != 0:
        subprocess.run([str(ROOT / ".ci/images/build-base-image.sh"), engine, image], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=15, help="measured tasks per mode")
    parser.add_argument("--engine", choices=["docker", "podman", "both"], default="docker")
    parser.add_argument("--image", default=os.environ.get("CONVEYOR_TEST_BASE_IMAGE", "conveyor/base:bookworm"))
    args = parser.parse_args()
    engines = ["docker", "podman"] if args.engine == "both" else [args.engine]
    for engine in engines:
        ensure_image(engine, args.image)
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-containers-"))
    server = ServerProcess(root / "home").start()
    daemons: list[DaemonProcess] = []
    try:
        _, bare = make_repo(root / "repos", {"train.py": TRAIN})
        client = server.client()
        modes = {"venv": []}
        daemons.append(DaemonProcess(server, root / "venv", "--queue", "venv", "--create-queue",
                                     env=agent_env(server, root / "venv")))
        for engine in engines:
            env = agent_env(server, root / engine, CLEARML_AGENT__AGENT__DOCKER_COMMAND=engine)
            # the task's repository is a local one: the container sees it at the same path
            daemons.append(DaemonProcess(server, root / engine, "--queue", engine, "--create-queue",
                                         "--docker", args.image, "-v", f"{bare}:{bare}:ro", env=env))
            modes[engine] = []
        results: dict[str, list[float]] = {mode: [] for mode in modes}
        for mode in modes:  # warm: image layers, the clone cache, the venv cache, the container's Conveyor
            for _ in range(2):
                one(client, bare, mode, timeout=600)
        for _ in range(args.tasks):
            for mode in modes:
                results[mode].append(one(client, bare, mode, timeout=300))
                time.sleep(0.2)
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; image {args.image}")
        print("enqueue → first line printed, warm image and caches, same task and server, modes interleaved:")
        venv = statistics.median(results["venv"])
        for mode, values in results.items():
            line = describe(f"{mode} mode", values)
            if mode != "venv":
                median = statistics.median(values)
                line += f"   +{(median - venv) * 1000:.0f} ms over venv mode ({median / venv:.1f}x)"
            print(line)
        print("target: container mode adds < 1000 ms over venv mode")
    finally:
        for daemon in daemons:
            daemon.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
