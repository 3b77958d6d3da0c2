"""The local runtime: a run is recorded so that a restarted daemon can adopt it, the record goes once the run has
been reaped, and a run that cannot start fails its task with the reason."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from conveyor.errors import TaskFailure
from conveyor.runtimes.base import RunHandle, Runtime, TaskRun
from conveyor.runtimes.local import LocalRuntime
from conveyor.runtimes.run_records import RunRecord, runs_dir


class QuickRuntime(LocalRuntime):
    """Runs a tiny python command instead of `conveyor execute`."""

    def __init__(self, argv: list[str]):
        super().__init__()
        self.argv = argv

    def command(self, task_id: str) -> list[str]:
        return self.argv


@pytest.fixture(autouse=True)
def agent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONVEYOR_AGENT_DIR", str(tmp_path / "agent"))
    return tmp_path / "agent"


def test_a_run_is_recorded_until_it_has_been_reaped() -> None:
    runtime: Runtime = QuickRuntime([sys.executable, "-c", "import sys; sys.exit(3)"])
    handle = runtime.launch(TaskRun("t1", "q", "host:0", None), {})
    record = json.loads((runs_dir() / "t1.json").read_text())
    assert (record["task_id"], record["queue_id"], record["worker"], record["pid"]) == ("t1", "q", "host:0", handle.pid)
    deadline = time.monotonic() + 10
    while (code := handle.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert code == 3 and handle.start_failure is None
    assert not (runs_dir() / "t1.json").exists()


def test_a_command_that_cannot_start_fails_the_task() -> None:
    with pytest.raises(TaskFailure, match="the agent could not start the task: No such file or directory"):
        QuickRuntime(["/nonexistent/conveyor"]).launch(TaskRun("t1", "q", "host:0"), {})
    assert not (runs_dir() / "t1.json").exists()


def test_a_restarted_daemon_adopts_what_still_runs_and_reports_what_is_gone() -> None:
    me = psutil.Process()
    RunRecord("alive", "q", "host:0", "host:0:service:alive", me.pid, me.create_time()).save()
    RunRecord("gone", "q", "host:0", None, me.pid, me.create_time() - 1000).save()  # the pid was reused
    RunRecord("other", "q", "host:1", None, me.pid, me.create_time()).save()  # another daemon's
    leftovers = {left.task_id: left for left in LocalRuntime().adopt("host:0")}
    assert set(leftovers) == {"alive", "gone"}
    alive, gone = leftovers["alive"], leftovers["gone"]
    assert alive.handle is not None and alive.handle.pid == os.getpid() and alive.handle.poll() is None
    assert (alive.queue_id, alive.sub_worker) == ("q", "host:0:service:alive")
    assert gone.handle is None and gone.reason == "its executor was gone when the agent restarted"
    assert not (runs_dir() / "gone.json").exists() and (runs_dir() / "other.json").exists()


# A standby executor as `conveyor execute --standby` is one, without Conveyor's imports: it writes down the task it was
# handed, a variable of the environment it got, and what its stdin is then.
STANDBY = """
import os, sys
from conveyor.runtimes.standby import await_task
task = await_task()
if task is None:
    sys.exit(0)
out = sys.argv[1]
with open(os.path.join(out, f"{task}.{os.getpid()}"), "w") as f:
    f.write(f"{os.environ.get('HANDED')} {os.environ.get('ONLY_AT_START')} {os.readlink('/proc/self/fd/0')}")
"""


class StandbyRuntime(QuickRuntime):
    def __init__(self, out: Path):
        super().__init__([sys.executable, "-c", "import sys; sys.exit(0)"])
        self.standby = True
        self.out = out

    def standby_command(self) -> list[str]:
        return [sys.executable, "-c", STANDBY, str(self.out)]


def ended(handle: RunHandle) -> int:
    deadline = time.monotonic() + 20
    while (code := handle.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert code is not None
    return code


def test_a_standby_executor_runs_the_task_with_the_environment_it_is_handed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLY_AT_START", "stale")
    runtime = StandbyRuntime(tmp_path)
    runtime.adopt("host:0")  # the first standby starts with the daemon
    (first,) = runtime.standby_pids()
    monkeypatch.delenv("ONLY_AT_START")
    handle = runtime.launch(TaskRun("t1", "q", "host:0"), {"HANDED": "yes"})
    assert handle.pid == first and json.loads((runs_dir() / "t1.json").read_text())["pid"] == first
    (second,) = runtime.standby_pids()  # the next one starts at once, ready for the next task
    assert second != first
    assert ended(handle) == 0
    # the daemon's environment as it is at launch, not as it was when the standby started
    assert (tmp_path / f"t1.{first}").read_text() == "yes None /dev/null"
    runtime._standby.close()  # type: ignore[union-attr]
    assert not runtime.standby_pids() and not list(tmp_path.glob(f"*.{second}"))


def test_a_draining_daemon_keeps_no_standby_executor(tmp_path: Path) -> None:
    runtime = StandbyRuntime(tmp_path)
    runtime.adopt("host:0")
    handle = runtime.launch(TaskRun("t1", "q", "host:0"), {})
    (waiting,) = runtime.standby_pids()
    runtime.drain()  # the daemon takes no more tasks: the waiting standby ends at once
    assert not runtime.standby_pids() and not psutil.pid_exists(waiting)
    assert ended(handle) == 0
    assert not runtime.standby_pids(), "a run that ends while draining starts no standby"


def test_without_a_live_standby_the_executor_is_started_for_the_task(tmp_path: Path) -> None:
    runtime = StandbyRuntime(tmp_path)
    runtime.adopt("host:0")
    (pid,) = runtime.standby_pids()
    psutil.Process(pid).kill()
    psutil.Process(pid).wait(10)
    handle = runtime.launch(TaskRun("t1", "q", "host:0"), {})
    assert handle.pid != pid and ended(handle) == 0 and not list(tmp_path.glob("t1.*"))
    assert runtime.standby_pids(), "a new standby once the run has ended"
    runtime._standby.close()  # type: ignore[union-attr]


def test_a_standby_settles_before_its_imports_unless_its_task_comes_first() -> None:
    from conveyor.runtimes.standby import settle

    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stream, os.fdopen(write_end, "wb") as writer:
        started = time.monotonic()
        settle(stream, 0.3)  # nothing written: it waits the whole time, leaving the CPU to the run just launched
        assert 0.25 < time.monotonic() - started < 2
        writer.write(b'{"task": "t1", "env": {}}\n')
        writer.flush()
        started = time.monotonic()
        settle(stream, 30)  # its task came: no wait at all
        assert time.monotonic() - started < 1
        assert stream.readline().startswith(b'{"task": "t1"')
