"""The cluster glue's reading of a job's end, against an in-memory server: the task fails with the cluster's reason
only while it is still the run that job was submitted for, not a retry the server queued after the job's executor
reported an infrastructure failure."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_agent_daemon import FakeApi

from conveyor.agent.cluster_glue import ClusterGlue
from conveyor.agent.daemon import Running
from conveyor.runtimes.cluster import ClusterJob, JobEnd, JobRecord, JobView


class EndedJob(ClusterJob):
    def __init__(self, record: JobRecord, final: JobEnd):
        super().__init__(record)
        self.final = final

    def view(self) -> JobView | None:
        return None

    def ended(self, last: JobView | None) -> JobEnd | None:
        return self.final

    def _cancel(self) -> None:
        pass

    def describe(self) -> str:
        return f"slurm job {self.record.job_id}"


def _glue(api: FakeApi) -> ClusterGlue:
    glue = ClusterGlue.__new__(ClusterGlue)  # only what _after_exit and _submit touch
    glue.client = api  # type: ignore[assignment]
    glue.worker = "slurm-glue"
    glue.messages, glue.units, glue.running = {}, {}, {}
    glue._lock = threading.Lock()
    glue._report = lambda stats=False: None  # type: ignore[method-assign]
    return glue


def _attempt(n: int, retried: bool) -> dict[str, Any]:
    return {"attempt": n, "worker": "slurm-glue", "reason": "failed cloning repository: host not reachable",
            "failure_class": "infrastructure", "retried": retried}


@pytest.mark.parametrize("retry_status", ["queued", "in_progress"])
def test_a_job_whose_run_failed_and_was_retried_leaves_the_retry_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_status: str) -> None:
    monkeypatch.setenv("CONVEYOR_AGENT_DIR", str(tmp_path))
    api = FakeApi()
    api.tasks["t1"] = {"status": retry_status, "attempts": [_attempt(1, True), _attempt(2, True)]}
    job = EndedJob(JobRecord("t1", "q", "slurm-glue", job_id="12", attempts=1),
                   JobEnd(killed=False, reason="slurm: COMPLETED", exit_status=1))
    _glue(api)._after_exit(Running("t1", "q", job), 1)
    assert api.called("tasks.failed") == [], "the retry was failed as the job's end"


def test_a_job_ended_before_its_task_started_fails_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_AGENT_DIR", str(tmp_path))
    api = FakeApi()
    api.tasks["t1"] = {"status": "queued", "attempts": [_attempt(1, True)]}
    job = EndedJob(JobRecord("t1", "q", "slurm-glue", job_id="12", attempts=1),
                   JobEnd(killed=True, reason="slurm: NODE_FAIL"))
    _glue(api)._after_exit(Running("t1", "q", job), 1)
    assert [(b["task"], b["status_reason"], b["failure_class"]) for b in api.called("tasks.failed")] == [
        ("t1", "slurm: NODE_FAIL before the task started", "infrastructure")]


@pytest.mark.parametrize(("end", "expected"), [("slurm: TIMEOUT after 00:05:00", "task"),
                                               ("slurm: OUT_OF_MEMORY after 00:01:00", "task"),
                                               ("slurm: PREEMPTED after 00:01:00", "infrastructure")])
def test_a_job_that_hit_its_own_limits_fails_the_task_as_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str, expected: str) -> None:
    monkeypatch.setenv("CONVEYOR_AGENT_DIR", str(tmp_path))
    api = FakeApi()
    api.tasks["t1"] = {"status": "in_progress", "attempts": []}
    job = EndedJob(JobRecord("t1", "q", "slurm-glue", job_id="12", attempts=0), JobEnd(killed=True, reason=end))
    _glue(api)._after_exit(Running("t1", "q", job), 1)
    assert [(b["status_reason"], b["failure_class"]) for b in api.called("tasks.failed")] == [(end, expected)]
