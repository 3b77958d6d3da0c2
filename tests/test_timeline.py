"""The startup timeline of a run, recorded by a real daemon and executor, stored on the task with its final status,
and shown by `conveyor task show`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentkit import DaemonProcess, agent_env, create_task, enqueue, make_repo, wait_final
from browserkit import screenshot, ui, ui_page  # noqa: F401 - ui is the fixture
from conftest import ServerProcess
from conveyor.agent.timeline import MARKS, Timeline, epoch
from conveyor.client.errors import ApiCallError

TRAIN = "import time\ntime.sleep(0.3)\nprint('first line of the task', flush=True)\ntime.sleep(0.3)\n"


def test_a_run_records_its_timeline_and_task_show_prints_it(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    _work, bare = make_repo(tmp_path / "repos", {"train.py": TRAIN})
    client = sqlite_server.client()
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default")
    try:
        task = create_task(client, repository=f"file://{bare}")
        enqueue(client, task)
        doc = wait_final(client, task, timeout=120)
    finally:
        daemon.stop()
    assert doc["status"] == "completed", doc.get("status_reason")
    timeline = doc["timeline"]
    marks = [m["mark"] for m in timeline["marks"]]
    assert marks == list(MARKS)  # every moment of a venv run, in order
    times = [epoch(m["time"]) for m in timeline["marks"]]
    assert times == sorted(times), timeline["marks"]
    durations = timeline["durations"]
    # the task sleeps 0.3 s before its first line and 0.3 s after it
    assert durations["entry_point_start"] >= 0.3 and durations["run"] >= 0.3, durations
    assert 0 < durations["pickup"] < durations["total"] < 60
    assert durations["pickup"] == pytest.approx(sum(durations[s] for s in (
        "queued", "launch", "checkout", "environment", "entry_point_start")), abs=0.002)
    assert timeline["worker"] == doc["last_worker"]

    shown = subprocess.run([sys.executable, "-m", "conveyor", "task", "show", task], capture_output=True, text=True,
                           env=sqlite_server.env(), timeout=60, check=True).stdout
    lines = shown[shown.index("Timeline:"):].splitlines()
    assert lines[0].split()[2] == "enqueued", shown  # "Timeline:  HH:MM:SS.mmm  enqueued"
    assert lines[1].split()[1] == "pulled" and lines[1].split()[-1] == "queued", shown  # "... pulled  +0.012 s queued"
    for label in ("pulled", "+", "checkout", "environment ready", "first output", "ended"):
        assert label in shown, (label, shown)
    assert f"enqueued to first output {durations['pickup']:.3f} s" in lines[-1]

    # the next run starts without the last one's timeline
    client.call("tasks.reset", {"task": task, "force": True})
    assert "timeline" not in client.call("tasks.get_by_id", {"task": task})["task"]


def test_a_malformed_timeline_is_a_clear_400(sqlite_server: ServerProcess) -> None:
    client = sqlite_server.client()
    task = create_task(client)
    client.call("tasks.started", {"task": task, "force": True})
    with pytest.raises(ApiCallError) as caught:
        client.call("tasks.completed", {"task": task, "force": True, "timeline": {"marks": "soon"}})
    assert caught.value.code == 400 and "timeline.marks" in caught.value.msg
    assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "in_progress"  # nothing changed


def test_the_task_page_shows_the_startup_as_a_bar(ui: Any, sqlite_server: ServerProcess) -> None:  # noqa: F811
    client = sqlite_server.client()
    task = create_task(client, name="timed")
    client.call("tasks.started", {"task": task, "force": True})
    timeline, at = Timeline(), 1_800_000_000.0
    for mark, after in zip(MARKS, (0, 0.02, 0.08, 0.4, 1.5, 0.25, 3.0), strict=True):  # as our agent sends it
        at += after
        timeline.mark(mark, at)
    client.call("tasks.completed", {"task": task, "force": True, "timeline": timeline.as_dict("host-a:0")})

    ui.goto(sqlite_server.url + f"/#/task/{task}/timeline")
    bar = ui.locator(".startup-bar span")
    bar.first.wait_for()
    phases = [bar.nth(i).get_attribute("data-phase") for i in range(bar.count())]
    assert phases == ["queued", "launch", "checkout", "environment", "entry_point_start", "run"]
    assert bar.nth(3).get_attribute("title") == "environment · 1.500 s"
    widths = [bar.nth(i).bounding_box()["width"] for i in range(bar.count())]
    # each span as long as it took: environment 1.5 s against checkout 0.4 s, run 3 s against environment
    assert widths[3] / widths[2] == pytest.approx(3.75, rel=0.05)
    assert widths[5] / widths[3] == pytest.approx(2, rel=0.05)
    card = ui.locator(".startup")
    assert "enqueued to first output 2.250 s" in card.inner_text() and "on host-a:0" in card.inner_text()
    assert ui.locator(".startup-list li").count() == 7
    assert ui.locator(".startup-list li[data-mark=first_output]").get_by_text("to first output 0.250 s").count() == 1
    assert ui.locator(".timeline-list li[data-status=completed]").count() == 1  # the status timeline stays below
    screenshot(ui, "task-startup-timeline")


def test_a_refused_timeline_does_not_cost_the_final_status(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """A worker id longer than the server keeps (600 characters) makes the timeline invalid: the run still ends
    completed, without a timeline."""
    client = sqlite_server.client()
    task = create_task(client, diff="print('standalone')\n")
    env = {**agent_env(sqlite_server, tmp_path), "CLEARML_WORKER_ID": "w" * 600}
    run = subprocess.run([sys.executable, "-m", "conveyor", "execute", "--id", task], env=env, capture_output=True,
                         text=True, timeout=120)
    doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "completed", run.stdout + run.stderr
    assert "timeline" not in doc and "refused the run's timeline" in run.stderr
