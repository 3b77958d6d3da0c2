"""Forcing benchmark: how soon a queue tag `force_workers:on` puts an idle daemon back to work.

    python bench/forcing.py [--samples 5]

A real server (SQLite) and a real daemon serving `default`. Each sample: the queue is tagged `force_workers:off`, a
task is enqueued and stays queued, then the tag becomes `force_workers:on`; timed from that call until the task
leaves the queue (the daemon pulled it) and until it is in progress (its executor started).

Figures: median and spread per mode, against the issue's target (the change takes effect within 2 s) and against
the reference measured in the same run: the real `clearml-agent daemon` (from PyPI) on the same server, which looks
at its queues' tags once per poll (5 s). Conveyor's daemon is measured long-polling and polling at that same 5 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentkit import (  # noqa: E402
    DaemonProcess,
    agent_env,
    create_task,
    enqueue,
    make_repo,
    reference_agent,
    reference_agent_env,
    wait_final,
)
from conftest import ServerProcess  # noqa: E402
from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED  # noqa: E402

TARGET_SEC = 2.0
REFERENCE = "reference: clearml-agent daemon"


def conveyor_daemon(long_poll: str) -> Callable[[ServerProcess, Path], Callable[[], None]]:
    def start(server: ServerProcess, folder: Path) -> Callable[[], None]:
        env = agent_env(server, folder, CLEARML_AGENT__AGENT__LONG_POLL_SEC=long_poll)
        daemon = DaemonProcess(server, folder, "--queue", "default", "--polling-interval", "5", env=env)

        def stop() -> None:
            daemon.stop()

        return stop

    return start


def clearml_agent(server: ServerProcess, folder: Path) -> Callable[[], None]:
    env = reference_agent_env(server, folder)
    log = open(folder / "ref-agent.log", "wb")  # noqa: SIM115 - closed with the agent
    proc = subprocess.Popen([str(reference_agent()), "daemon", "--queue", "default", "--foreground"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(5)  # registered and polling

    def stop() -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()

    return stop


MODES: dict[str, Callable[[ServerProcess, Path], Callable[[], None]]] = {
    "conveyor, long-poll": conveyor_daemon("10"),
    "conveyor, polling every 5 s": conveyor_daemon("0"),
    REFERENCE: clearml_agent,
}


def one_sample(server: ServerProcess, root: Path, queue: str, settle: float) -> tuple[float, float]:
    client = server.client()
    client.call("queues.update", {"queue": queue, "tags": [QUEUE_PAUSED]})
    time.sleep(settle)  # a poll that began before the tag has ended
    _, bare = make_repo(root / f"repo-{time.monotonic_ns()}", {"train.py": "print('hi')\n"})
    task = create_task(client, repository=f"file://{bare}")
    enqueue(client, task)
    time.sleep(1.5)  # the daemon idles with a task waiting
    assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "queued", "pulled while forced off"
    start = time.monotonic()
    client.call("queues.update", {"queue": queue, "tags": [QUEUE_FORCED_ON]})
    pulled: float | None = None
    started: float | None = None
    while started is None or pulled is None:
        now = time.monotonic() - start
        entries = client.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]
        if pulled is None and all(e["task"] != task for e in entries):
            pulled = now
        if client.call("tasks.get_by_id", {"task": task})["task"]["status"] != "queued":
            started = now
            pulled = pulled if pulled is not None else now
        assert now < 60, "the task was never pulled"
        time.sleep(0.01)
    assert wait_final(client, task, timeout=600)["status"] == "completed"
    return pulled, started


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    root = Path(tempfile.mkdtemp(prefix="conveyor-forcing-"))
    server = ServerProcess(root / "home").start()
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        queue = str(server.client().call("queues.get_default", {})["id"])
        for number, (mode, start) in enumerate(MODES.items()):
            folder = root / f"agent-{number}"
            folder.mkdir(parents=True)
            stop = start(server, folder)
            try:
                settle = 6.0 if mode == REFERENCE else 0.5  # the reference reads the tags once per 5 s poll
                results[mode] = [one_sample(server, folder, queue, settle) for _ in range(args.samples)]
            finally:
                stop()
                server.client().call("queues.update", {"queue": queue, "tags": []})
    finally:
        server.stop()
    reference = statistics.median(p for p, _ in results[REFERENCE])
    for mode, samples in results.items():
        pulled = [p for p, _ in samples]
        started = [s for _, s in samples]
        ratio = f"{reference / statistics.median(pulled):.1f}x sooner than the reference" \
            if mode != REFERENCE else "the reference"
        print(f"{mode}: tag on -> pulled {spread(pulled)}; -> in progress {spread(started)}; "
              f"within the {TARGET_SEC:g} s target: {sum(p <= TARGET_SEC for p in pulled)} of {len(pulled)}; {ratio}")


if __name__ == "__main__":
    main()
