"""The executor against an in-memory server: the statuses it sets, with the agent's status message, the lines it
leaves in the task's log, and how it notices an abort or a status set elsewhere. Nothing is run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_agent_daemon import FakeApi, config

from conveyor.agent.executor import ExecuteOptions, Executor, Outcome
from conveyor.errors import TaskFailure
from conveyor.protocol.status import STOPPING, TaskStatus, changed_by

WORKER = "host:0"
SCRIPT = {"repository": "https://example.invalid/repo.git", "entry_point": "train.py"}


def make_executor(tmp_path: Path, api: FakeApi, task: str = "t1", **opts: Any) -> Executor:
    cfg = config(tmp_path, abort_poll_interval_sec=0.002, log_flush_interval_sec=0.001,
                 venvs_dir=str(tmp_path / "venvs"))
    return Executor(api, cfg, ExecuteOptions(task_id=task, worker_id=WORKER, under_daemon=True, echo=False, **opts))


def api_with(**task: Any) -> FakeApi:
    api = FakeApi()
    api.tasks["t1"] = {"status": "queued", "script": SCRIPT, **task}
    return api


def test_starting_a_queued_task_marks_it_running_by_this_agent(tmp_path: Path) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    assert executor._start() is not None
    executor._close_logs()
    assert api.tasks["t1"]["status"] == "in_progress"
    assert api.tasks["t1"]["status_message"] == changed_by(f"conveyor {WORKER}") == "Changed by conveyor host:0"
    assert api.called("tasks.dequeue") == [{"task": "t1", "new_status": "in_progress"}]


def test_a_task_that_was_not_queued_is_refused_with_require_queue(tmp_path: Path) -> None:
    api = api_with(status="created")
    executor = make_executor(tmp_path, api, require_queue=True)
    assert executor._start() is None
    assert api.tasks["t1"]["status"] == "created", "left as it was"
    assert any("was not queued; --require-queue refuses to run it" in line for line in api.log_of("t1"))


def test_a_task_without_a_script_fails_with_the_reason(tmp_path: Path) -> None:
    api = api_with(script=None)
    assert make_executor(tmp_path, api)._start() is None
    assert api.status("t1") == ("failed", "can not run task without script information")
    assert any("no script section" in line for line in api.log_of("t1"))


@pytest.mark.parametrize(("outcome", "status", "last_line"), [
    (Outcome(TaskStatus.completed, "worker execution done", 0), "completed", "Process completed successfully"),
    (Outcome(TaskStatus.failed, "worker execution exit code 3", 3), "failed",
     "Process failed: worker execution exit code 3 [task]"),
    (Outcome(TaskStatus.stopped, "task was stopped by tasks.stop"), "stopped",
     "Process aborted: task was stopped by tasks.stop"),
])
def test_the_final_status_carries_the_reason_and_the_agents_message(
        tmp_path: Path, outcome: Outcome, status: str, last_line: str) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    executor._start()
    executor._finish(outcome)
    assert api.status("t1") == (status, outcome.reason)
    assert api.tasks["t1"]["status_message"] == "Changed by conveyor host:0"
    assert api.log_of("t1")[-1] == f"conveyor: {last_line}\n"


def test_a_status_someone_else_set_is_left_alone(tmp_path: Path) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    executor._start()
    api.tasks["t1"]["status"] = "published"
    executor._finish(Outcome(None, "the task's status changed to published elsewhere"))
    assert api.tasks["t1"]["status"] == "published"
    assert not api.called("tasks.completed") and not api.called("tasks.failed") and not api.called("tasks.stopped")


def test_a_final_status_the_server_does_not_take_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    executor._start()
    api.down.add("tasks.completed")
    with caplog.at_level("WARNING", logger="conveyor.agent.executor"):
        executor._finish(Outcome(TaskStatus.completed, "worker execution done", 0))
    assert any("could not set the final status" in r.getMessage() for r in caplog.records)


def watch_until_triggered(executor: Executor) -> Outcome:
    watcher = threading.Thread(target=executor._watch, daemon=True)
    watcher.start()
    watcher.join(3.0)
    assert not watcher.is_alive(), "the watcher did not react"
    assert executor._abort is not None
    return executor._abort


def test_an_abort_asked_with_stopping_stops_the_task(tmp_path: Path) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    executor._start()
    api.tasks["t1"]["status_message"] = STOPPING
    outcome = watch_until_triggered(executor)
    executor._close_logs()
    assert outcome == Outcome(TaskStatus.stopped, "task was stopped by tasks.stop")
    assert "conveyor: stopping the task: task was stopped by tasks.stop\n" in api.log_of("t1")


@pytest.mark.parametrize("elsewhere", ["completed", "failed", "queued", "published"])
def test_a_status_set_elsewhere_ends_the_run_without_a_status_of_ours(tmp_path: Path, elsewhere: str) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    executor._start()
    api.tasks["t1"]["status"] = elsewhere
    outcome = watch_until_triggered(executor)
    executor._close_logs()
    assert outcome == Outcome(None, f"the task's status changed to {elsewhere} elsewhere")


def test_a_task_deleted_meanwhile_ends_the_run(tmp_path: Path) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    executor._start()
    del api.tasks["t1"]
    assert watch_until_triggered(executor) == Outcome(None, "the task was deleted")
    executor._close_logs()


def test_a_missing_prebuilt_environment_fails_the_task_with_what_to_do(tmp_path: Path) -> None:
    api = api_with()
    executor = make_executor(tmp_path, api)
    with pytest.raises(TaskFailure, match="rebuild the image with `conveyor build`"):
        executor._run_prebuilt(api.tasks["t1"], SCRIPT, tmp_path / "code", tmp_path / "python")


def test_a_failed_start_waits_for_the_checkout_begun_meanwhile_and_removes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkout runs while the start is reported; a start that fails (the server gone) once left the checkout's
    git running as the executor exited, and its folder on disk."""
    api = api_with()
    api.down.add("tasks.dequeue")
    executor = make_executor(tmp_path, api)
    finished = threading.Event()

    def slow_checkout(script: dict[str, Any], code_dir: Path) -> str | None:
        (code_dir / "train.py").parent.mkdir(parents=True, exist_ok=True)
        (code_dir / "train.py").write_text("print('hi')\n")
        threading.Event().wait(0.3)  # git still writing when the start call fails
        finished.set()
        return None

    monkeypatch.setattr(executor, "_prepare_code", slow_checkout)
    with pytest.raises(Exception, match="connection refused"):
        executor.run()
    assert finished.is_set(), "the checkout was cut off"
    assert executor.work_dir is not None and not executor.work_dir.exists(), "the checkout was left on disk"
