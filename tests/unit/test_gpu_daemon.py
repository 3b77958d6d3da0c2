"""The daemon with GPUs, against the in-memory server, a fake runtime and the fake GPU inventory: it waits while
another process holds memory on its GPU and says so in its status report; with --dynamic-gpus each task runs on its
own GPUs (or share) under a sub-worker named for them, and a restarted daemon keeps its adopted tasks' GPUs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_agent_daemon import FakeApi, FakeRun, FakeRuntime, config, serve_until

from conveyor.agent.daemon import Daemon, DaemonOptions
from conveyor.agent.gpu_allocation import GpuRequest
from conveyor.agent.policy import QueuePolicy
from conveyor.protocol.tags import QUEUE_PAUSED
from conveyor.protocol.worker_state import STATE_FIELD, STATE_REASON_FIELD
from conveyor.runtimes.base import Leftover


class QueueApi(FakeApi):
    def queues_get_by_id(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"queue": {"id": body["queue"], "entries": [{"task": t} for t in self.queues.get(body["queue"], [])]}}


def fake_gpus(path: Path, count: int, processes: dict[int, list[dict[str, float]]] | None = None) -> None:
    path.write_text(json.dumps([{"index": i, "memory_total_mb": 8192, "processes": (processes or {}).get(i, [])}
                                for i in range(count)]))


def gpu_daemon(tmp_path: Path, api: FakeApi, runtime: FakeRuntime, gpus: str,
               dynamic: dict[str, GpuRequest] | None = None) -> Daemon:
    cfg = config(tmp_path, gpu_wait_poll_sec=0.01, gpu_foreign_memory_threshold_mb=1024)
    daemon = Daemon(api, cfg, DaemonOptions(queues=list(api.queues), gpus=gpus, polling_interval=0.001,
                                            dynamic_gpus=dynamic), runtime=runtime)
    daemon.worker = "host:dgpu" + gpus if dynamic else "host:gpu" + gpus
    daemon.queue_names = {q: q for q in api.queues}
    daemon.policy = QueuePolicy(list(api.queues))
    assert daemon.gpu_broker is not None
    daemon.gpu_broker.bind(daemon.queue_names)
    return daemon


def test_a_gpu_used_by_another_process_is_waited_for_and_the_report_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = tmp_path / "gpus.json"
    fake_gpus(inventory, 2, {1: [{"pid": 1234, "used_memory_mb": 3276.8}]})
    monkeypatch.setenv("CONVEYOR_FAKE_GPUS", str(inventory))
    api = FakeApi({"q": ["t1"]})
    api.server_supports = lambda feature: feature == "worker_state"  # type: ignore[method-assign]
    runtime = FakeRuntime(api)
    daemon = gpu_daemon(tmp_path, api, runtime, "1")
    serve_until(daemon, lambda: any(b.get(STATE_FIELD) == "waiting_for_gpu"
                                    for b in api.called("workers.status_report")))
    assert runtime.launched == []
    report = next(b for b in api.called("workers.status_report") if b.get(STATE_FIELD) == "waiting_for_gpu")
    assert report[STATE_REASON_FIELD] == "waiting: GPU 1 has 3.2 GiB used by pid 1234"

    fake_gpus(inventory, 2, {1: [{"pid": 1234, "used_memory_mb": 500}]})  # below the threshold: free
    daemon.draining.clear()
    serve_until(daemon, lambda: len(runtime.launched) == 1)
    assert runtime.envs[0]["CUDA_VISIBLE_DEVICES"] == "1"
    assert api.called("workers.status_report")[-1][STATE_FIELD] == "active"


def test_dynamic_gpus_run_the_documented_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = tmp_path / "gpus.json"
    fake_gpus(inventory, 3)
    monkeypatch.setenv("CONVEYOR_FAKE_GPUS", str(inventory))
    api = QueueApi({"dual": ["d"], "quarter": ["q"], "half": ["h"], "single": ["s"]})
    runs: dict[str, FakeRun] = {}

    def running(task_id: str) -> FakeRun:
        runs[task_id] = FakeRun(task_id, code=None)
        return runs[task_id]

    runtime = FakeRuntime(api, running)
    daemon = gpu_daemon(tmp_path, api, runtime, "0-2", {"dual": GpuRequest(2, 2), "quarter": GpuRequest(share=2),
                                                        "half": GpuRequest(share=4), "single": GpuRequest(1, 1)})
    serve_until(daemon, lambda: len(runtime.launched) == 3 and daemon.state[1] != "")
    time.sleep(0.05)
    assert [(r.task_id, r.sub_worker) for r in runtime.launched] == [
        ("d", "host:gpu0,1"), ("q", "host:gpu2.25a"), ("h", "host:gpu2.5b")]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in runtime.envs] == ["0,1", "2", "2"]
    assert [e.get("CLEARML_AGENT_GPU_FRACTIONS") for e in runtime.envs] == [None, "0.25", "0.5"]
    assert daemon.state[1] == "waiting: queue single needs 1 GPU, at most 0.25 of a GPU free"
    registered = [b["worker"] for b in api.called("workers.register")]
    assert registered == ["host:gpu0,1", "host:gpu2.25a", "host:gpu2.5b"]

    runs["d"].code = 0  # the dual task ends: GPU 0 and 1 are free, single takes GPU 0
    daemon.draining.clear()
    serve_until(daemon, lambda: len(runtime.launched) == 4)
    assert (runtime.launched[3].sub_worker, runtime.envs[3]["NVIDIA_VISIBLE_DEVICES"]) == ("host:gpu0", "0")
    assert {"worker": "host:gpu0,1", "queues": []} in api.called("workers.unregister")


def test_a_restarted_daemon_keeps_the_gpus_of_the_tasks_it_adopts(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = tmp_path / "gpus.json"
    fake_gpus(inventory, 2)
    monkeypatch.setenv("CONVEYOR_FAKE_GPUS", str(inventory))
    api = QueueApi({"single": ["next"]})
    api.tasks["old"] = {"status": "in_progress"}
    runtime = FakeRuntime(api, lambda task_id: FakeRun(task_id, code=None),
                          leftovers=[Leftover("old", "single", "host:gpu0", FakeRun("old", code=None))])
    daemon = gpu_daemon(tmp_path, api, runtime, "0-1", {"single": GpuRequest(1, 1)})
    daemon._take_over_leftovers()
    serve_until(daemon, lambda: len(runtime.launched) == 1)
    assert runtime.launched[0].sub_worker == "host:gpu1"  # GPU 0 is the adopted task's


def test_dynamic_gpus_honour_a_queue_forced_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = tmp_path / "gpus.json"
    fake_gpus(inventory, 2)
    monkeypatch.setenv("CONVEYOR_FAKE_GPUS", str(inventory))
    api = QueueApi({"single": ["s1"], "other": ["o1"]})
    api.queue_tags["single"] = [QUEUE_PAUSED]
    runtime = FakeRuntime(api)
    daemon = gpu_daemon(tmp_path, api, runtime, "0-1", {"single": GpuRequest(1, 1), "other": GpuRequest(1, 1)})
    serve_until(daemon, lambda: len(runtime.launched) == 1)
    time.sleep(0.05)  # many more pulls
    assert [r.task_id for r in runtime.launched] == ["o1"] and api.queues["single"] == ["s1"]
    api.queue_tags["single"] = []
    daemon.draining.clear()
    serve_until(daemon, lambda: len(runtime.launched) == 2)
    assert runtime.launched[1].task_id == "s1"
