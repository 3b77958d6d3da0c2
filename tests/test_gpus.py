"""GPUs end to end, through the fake inventory (`CONVEYOR_FAKE_GPUS`): a real server, real daemons, real task
processes. Dynamic allocation as the docs' worked example, a restarted daemon keeping its tasks' GPUs, GPU-aware
pulling (another process's memory on the GPU), and the watchdog stopping a fractional task past its share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from agentkit import DaemonProcess, agent_env, create_task, enqueue, executor_of, log_text, wait_final, wait_status
from conftest import ServerProcess

# A task that says what it sees, then sleeps as long as its first argument says.
SHOW = ("import os, sys, time\n"
        "print('sees', os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('NVIDIA_VISIBLE_DEVICES'),\n"
        "      os.environ.get('CLEARML_WORKER_ID'), os.environ.get('CLEARML_AGENT_GPU_FRACTIONS'), flush=True)\n"
        "time.sleep(float(sys.argv[1]))\n")


def fake_gpus(path: Path, count: int, processes: dict[int, list[dict[str, Any]]] | None = None) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"index": i, "uuid": f"GPU-{i}", "memory_total_mb": 8192,
                                "processes": (processes or {}).get(i, [])} for i in range(count)]))
    os.replace(tmp, path)  # the daemon reads it at any moment: never half a file
    return path


def show_task(client: Any, name: str, seconds: float) -> str:
    return create_task(client, name=name, repository="", diff=SHOW, entry_point=f"show.py {seconds}")


def sees(client: Any, task: str) -> str:
    return next(line for line in log_text(client, task).splitlines() if line.startswith("sees "))


def test_dynamic_gpus_run_the_documented_example(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """--gpus 0-2 --queue dual_gpus=2 quarter_gpu=0.25 half_gpu=0.5 single_gpu=1, one task in each: dual runs on
    GPUs 0-1, quarter and half share GPU 2, single waits until a whole GPU is free, then runs."""
    client = sqlite_server.client()
    queues = ["dual_gpus", "quarter_gpu", "half_gpu", "single_gpu"]
    for queue in queues:
        client.call("queues.create", {"name": queue})
    tasks = dict(zip(queues, [show_task(client, "dual", 5), show_task(client, "quarter", 14),
                              show_task(client, "half", 14), show_task(client, "single", 0)], strict=True))
    for queue, task in tasks.items():
        enqueue(client, task, queue)
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(fake_gpus(tmp_path / "gpus.json", 3)),
                    CLEARML_WORKER_NAME="box")
    daemon = DaemonProcess(sqlite_server, tmp_path, "--dynamic-gpus", "--gpus", "0-2", "--queue", "dual_gpus=2",
                           "quarter_gpu=0.25", "half_gpu=0.5", "single_gpu=1", env=env)
    try:
        for queue in queues[:3]:
            wait_status(client, tasks[queue], "in_progress", timeout=60)
        expected = {"box:gpu0,1": tasks["dual_gpus"], "box:gpu2.25a": tasks["quarter_gpu"],
                    "box:gpu2.5b": tasks["half_gpu"]}
        deadline = time.time() + 10  # each sub-worker reports its task just after the task is marked started
        while True:
            workers = {w["id"]: (w.get("task") or {}).get("id")
                       for w in client.call("workers.get_all", {})["workers"]}
            if {w: t for w, t in workers.items() if t} == expected or time.time() > deadline:
                break
            time.sleep(0.1)
        assert {w: t for w, t in workers.items() if t} == expected
        assert "box:dgpu0-2" in workers
        listed = subprocess.run([sys.executable, "-m", "conveyor", "worker", "list"], env=env, capture_output=True,
                                text=True, timeout=60).stdout
        for worker, task in expected.items():  # `worker list` shows each task with the GPUs it holds
            assert any(line.startswith(worker + " ") and task in line for line in listed.splitlines()), listed
        assert client.call("tasks.get_by_id", {"task": tasks["single_gpu"]})["task"]["status"] == "queued"
        docs = {queue: wait_final(client, task, timeout=180) for queue, task in tasks.items()}
        assert {q: d["status"] for q, d in docs.items()} == dict.fromkeys(queues, "completed")
        assert sees(client, tasks["dual_gpus"]) == "sees 0,1 0,1 box:gpu0,1 None"
        assert sees(client, tasks["quarter_gpu"]) == "sees 2 2 box:gpu2.25a 0.25"
        assert sees(client, tasks["half_gpu"]) == "sees 2 2 box:gpu2.5b 0.5"
        assert sees(client, tasks["single_gpu"]) == "sees 0 0 box:gpu0 None"
        # quarter and half ran side by side; single started only once dual had freed its GPUs
        assert docs["quarter_gpu"]["started"] < docs["half_gpu"]["completed"]
        assert docs["half_gpu"]["started"] < docs["quarter_gpu"]["completed"]
        assert docs["single_gpu"]["started"] >= docs["dual_gpus"]["completed"]
        assert docs["single_gpu"]["started"] < docs["quarter_gpu"]["completed"]
        assert "waiting: queue single_gpu needs 1 GPU" in daemon.output()
    finally:
        daemon.stop()


def test_a_restarted_daemon_keeps_the_gpus_its_adopted_task_holds(sqlite_server: ServerProcess,
                                                                    tmp_path: Path) -> None:
    client = sqlite_server.client()
    client.call("queues.create", {"name": "single"})
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(fake_gpus(tmp_path / "gpus.json", 2)),
                    CLEARML_WORKER_NAME="box")
    args = ("--dynamic-gpus", "--gpus", "0-1", "--queue", "single=1")
    daemon = DaemonProcess(sqlite_server, tmp_path, *args, env=env)
    restarted = None
    first, second = show_task(client, "first", 15), show_task(client, "second", 0)
    try:
        enqueue(client, first, "single")
        wait_status(client, first, "in_progress")
        executor_of(daemon, first)  # started: what the restarted daemon adopts
        daemon.proc.kill()
        daemon.proc.wait()
        restarted = DaemonProcess(sqlite_server, tmp_path, *args, env=env)
        assert f"adopted task {first}" in restarted.output()
        enqueue(client, second, "single")
        assert wait_final(client, second, timeout=120)["status"] == "completed"
        assert sees(client, second) == "sees 1 1 box:gpu1 None", "GPU 0 is the adopted task's"
        assert wait_final(client, first, timeout=120)["status"] == "completed"
        assert sees(client, first) == "sees 0 0 box:gpu0 None"
    finally:
        (restarted or daemon).stop()
        daemon.stop()


def test_a_gpu_with_another_process_on_it_is_waited_for(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    client = sqlite_server.client()
    inventory = fake_gpus(tmp_path / "gpus.json", 2, {0: [{"pid": 999999, "used_memory_mb": 3276.8}]})
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(inventory),
                    CLEARML_AGENT__AGENT__GPU_WAIT_POLL_SEC="0.2")
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default", "--gpus", "0", env=env)
    task = show_task(client, "waits", 0)
    try:
        enqueue(client, task)
        deadline = time.time() + 30
        while "waiting_for_gpu" not in daemon.output() and time.time() < deadline:
            time.sleep(0.1)
        assert "worker state: waiting_for_gpu (waiting: GPU 0 has 3.2 GiB used by pid 999999)" in daemon.output()
        time.sleep(2)
        assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "queued"
        fake_gpus(inventory, 2, {1: [{"pid": 999999, "used_memory_mb": 3276.8}]})  # it moved to GPU 1
        assert wait_final(client, task, timeout=120)["status"] == "completed"
        assert sees(client, task).startswith("sees 0 0 ")
    finally:
        daemon.stop()


# A task that holds GPU memory as the fake inventory says: 93 % of a quarter of 8 GiB first, then past it.
HOG = ("import json, os, sys, time\n"
       "path = os.environ['CONVEYOR_FAKE_GPUS']\n"
       "def use(mb):\n"
       "    gpus = json.load(open(path))\n"
       "    gpus[0]['processes'] = [{'pid': os.getpid(), 'used_memory_mb': mb}]\n"
       "    open(path + '.w', 'w').write(json.dumps(gpus))\n"
       "    os.replace(path + '.w', path)\n"
       "use(1900)\n"
       "time.sleep(2)\n"
       "use(3000)\n"
       "print('holding 3000 MB in pid', os.getpid(), flush=True)\n"
       "time.sleep(120)\n")


def test_the_watchdog_stops_a_fractional_task_past_its_share(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    client = sqlite_server.client()
    client.call("queues.create", {"name": "quarter"})
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(fake_gpus(tmp_path / "gpus.json", 1)),
                    CLEARML_AGENT__AGENT__GPU_FRACTIONS__GRACE_SEC="2")
    daemon = DaemonProcess(sqlite_server, tmp_path, "--dynamic-gpus", "--gpus", "0", "--queue", "quarter=0.25",
                           env=env)
    task = create_task(client, name="hog", repository="", diff=HOG, entry_point="hog.py")
    try:
        enqueue(client, task, "quarter")
        doc = wait_final(client, task, timeout=120)
        assert doc["status"] == "stopped"
        assert doc["status_reason"] == "GPU memory limit: used 2.9 GiB of the 2.0 GiB its 0.25 of GPU 0 allows"
        log = log_text(client, task)
        assert "warning: the task uses 1.9 GiB of GPU memory, 93% of the 2.0 GiB its 0.25 of GPU 0 allows" in log
        pid = int(log.split("holding 3000 MB in pid ")[1].split()[0])
        deadline = time.time() + 15
        while psutil.pid_exists(pid) and time.time() < deadline:
            time.sleep(0.2)
        assert not psutil.pid_exists(pid), "the task's process outlived its stop"
    finally:
        daemon.stop()


def test_a_malformed_dynamic_queue_is_one_clear_line(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    env = agent_env(sqlite_server, tmp_path)
    done = subprocess.run([sys.executable, "-m", "conveyor", "daemon", "--dynamic-gpus", "--gpus", "0-2", "--queue",
                           "dual=2", "third=0.3"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--queue third=0.3: a fraction of a GPU must be a step of 0.125 above 0" in done.stderr
    assert "Traceback" not in done.stderr
