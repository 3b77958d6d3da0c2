"""The Orchestration pages in a real headless Chromium against a real server: a queue reordered, moved and emptied
from the UI changes what the server holds; a real daemon's machine stats are charted (uPlot) over a chosen range."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from agentkit import DaemonProcess, agent_env
from browserkit import screenshot, ui  # noqa: F401 - ui is the fixture

# How many pixels of a chart's canvas are drawn in its first line's colour (PALETTE[0] of app.js, #2f66e8): a
# chart with data has a line there, an empty one only its grey grid and axes.
LINE_PIXELS = """(el) => {
  const canvas = el.querySelector("canvas");
  if (!canvas) return -1;
  const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const off = Math.abs(data[i] - 0x2f) + Math.abs(data[i + 1] - 0x66) + Math.abs(data[i + 2] - 0xe8);
    if (off < 60 && data[i + 3] > 200) n++;
  }
  return n;
}"""


def _order(client: Any, queue: str) -> list[str]:
    return [e["task"] for e in client.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]]


def _wait_order(client: Any, queue: str, expected: list[str], timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while (order := _order(client, queue)) != expected:
        assert time.time() < deadline, f"queue order is {order}, expected {expected}"
        time.sleep(0.1)


def _ui_order(page: Any, queue: str, expected: list[str]) -> None:
    """The page shows the queue's entries in `expected` order (its next refresh, within seconds)."""
    page.wait_for_function(
        "([q, ids]) => JSON.stringify([...document.querySelectorAll(`section[data-queue='${q}'] tbody tr`)]"
        ".map((tr) => tr.dataset.task)) === JSON.stringify(ids)", arg=[queue, expected])


def test_queue_entries_reorder_move_and_remove(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    client = sqlite_server.client()
    source = client.call("queues.create", {"name": "orch-source"})["id"]
    target = client.call("queues.create", {"name": "orch-target", "display_name": "Target (A100)"})["id"]
    hidden = client.call("queues.create", {"name": "orch-hidden", "system_tags": ["hidden"]})["id"]
    full = client.call("queues.create", {"name": "orch-full", "max_entries": 1})["id"]
    blocker = client.call("tasks.create", {"name": "orch-blocker", "type": "training"})["id"]
    client.call("tasks.enqueue", {"task": blocker, "queue": full})
    tasks = {}
    for name in ("first", "second", "third"):
        tasks[name] = client.call("tasks.create", {"name": f"orch-{name}", "type": "training"})["id"]
        client.call("tasks.enqueue", {"task": tasks[name], "queue": source})
    one, two, three = tasks["first"], tasks["second"], tasks["third"]
    ui.goto(sqlite_server.url + "/#/queues")
    card = ui.locator(f"section[data-queue='{source}']")

    def press(task: str, label: str) -> None:
        card.locator(f"tr[data-task='{task}']").get_by_role("button", name=label, exact=True).click()

    _ui_order(ui, source, [one, two, three])
    # The first entry cannot go up, the last cannot go down.
    assert card.locator(f"tr[data-task='{one}']").get_by_role("button", name="Move up", exact=True).is_disabled()
    assert card.locator(f"tr[data-task='{three}']").get_by_role("button", name="Move down", exact=True).is_disabled()
    for task, label, expected in [
        (three, "Move to top", [three, one, two]),
        (three, "Move down", [one, three, two]),
        (one, "Move to bottom", [three, two, one]),
        (two, "Move up", [two, three, one]),
    ]:
        press(task, label)
        _wait_order(client, source, expected)
        _ui_order(ui, source, expected)

    # Another queue: off this one, at the end of the other, still queued. The others by their display names; hidden
    # ones are not offered, full ones cannot be picked.
    ui.locator(f"section[data-queue='{full}']", has_text="1 task queued of at most 1").wait_for()
    press(three, "Move to another queue")
    assert sorted(ui.get_by_role("menuitem").all_inner_texts()) == ["Target (A100)", "default", "orch-full (full)"]
    assert ui.get_by_role("menuitem", name="orch-full (full)").is_disabled()
    ui.get_by_role("menuitem", name="Target (A100)").click()
    _wait_order(client, source, [two, one])
    _wait_order(client, target, [three])
    moved = client.call("tasks.get_by_id", {"task": three})["task"]
    assert moved["status"] == "queued" and moved["execution"]["queue"] == target
    ui.locator(f"section[data-queue='{target}'] tr[data-task='{three}']").wait_for()

    press(one, "Remove")
    _wait_order(client, source, [two])
    assert client.call("tasks.get_by_id", {"task": one})["task"]["status"] == "created"
    _ui_order(ui, source, [two])
    assert ui.locator(f"section[data-queue='{target}'] h2").inner_text() == "Target (A100)"

    # Hidden queues only when asked.
    assert ui.locator(f"section[data-queue='{hidden}']").count() == 0
    ui.get_by_label("Show hidden").check()
    ui.locator(f"section[data-queue='{hidden}']", has_text="orch-hidden").get_by_text("hidden", exact=True).wait_for()
    ui.get_by_label("Show hidden").uncheck()
    ui.locator(f"section[data-queue='{hidden}']").wait_for(state="detached")
    screenshot(ui, "queues")


def test_queue_metrics_are_charted_over_the_chosen_range(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    client = sqlite_server.client()
    queue = client.call("queues.create", {"name": "orch-metrics"})["id"]
    for i in range(3):
        task = client.call("tasks.create", {"name": f"orch-wait-{i}", "type": "training"})["id"]
        client.call("tasks.enqueue", {"task": task, "queue": queue})
    ui.goto(sqlite_server.url + "/#/queues")
    length = ui.locator("[data-chart=queue_length]")
    wait = ui.locator("[data-chart=queue_wait]")
    length.locator("canvas").wait_for()
    wait.locator("canvas").wait_for()
    # The queue's length is charted: three tasks waiting.
    ui.wait_for_function("(el) => Number(el.dataset.points) > 0", arg=length.element_handle())
    assert "orch-metrics 3" in length.locator(".chart-now").inner_text()
    # Another range asks the server for that window, in coarser buckets.
    with ui.expect_request(lambda r: r.url.endswith("/queues.get_queue_metrics")
                           and json.loads(r.post_data or "{}").get("interval") == 900) as asked:
        ui.get_by_role("button", name="Day", exact=True).click()
    body = json.loads(asked.value.post_data or "{}")
    assert 86400 - 5 <= body["to_date"] - body["from_date"] <= 86400 + 5 and queue in body["queue_ids"]
    assert ui.get_by_role("button", name="Day", exact=True).get_attribute("aria-pressed") == "true"
    ui.wait_for_function("(el) => Number(el.dataset.points) > 0", arg=length.element_handle())
    screenshot(ui, "queue-metrics")


def test_worker_charts_from_a_real_daemon(ui: Any, sqlite_server: Any, tmp_path: Path) -> None:  # noqa: F811
    gpus = tmp_path / "gpus.json"
    gpus.write_text('[{"index": 0, "uuid": "GPU-aaa", "memory_total_mb": 81920, "memory_used_mb": 20480, '
                    '"utilization": 42, "temperature": 55}, {"index": 1, "uuid": "GPU-bbb", "memory_total_mb": 81920, '
                    '"memory_used_mb": 4096, "utilization": 7, "temperature": 40}]')
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(gpus),
                    CLEARML_AGENT__AGENT__STATUS_REPORT_INTERVAL_SEC="1")
    daemon = DaemonProcess(sqlite_server, tmp_path, "--queue", "default", "--gpus", "0,1", env=env)
    try:
        client = sqlite_server.client()
        deadline = time.time() + 20
        while not (workers := client.call("workers.get_all", {})["workers"]) or not workers[0].get("machine_stats"):
            assert time.time() < deadline, "the daemon never reported machine stats"
            time.sleep(0.2)
        worker = workers[0]["id"]
        ui.goto(sqlite_server.url + "/#/workers")
        row = ui.locator(f"tr[data-worker='{worker}']")
        row.get_by_text("default · 0").wait_for()
        screenshot(ui, "workers")

        row.get_by_role("link", name=worker).click()
        ui.get_by_role("heading", name=worker).wait_for()
        assert ui.evaluate("decodeURIComponent(location.hash)") == f"#/workers/{worker}"
        cpu = ui.locator("[data-chart=cpu]")
        ui.wait_for_function("(el) => Number(el.dataset.points) > 0", arg=cpu.element_handle())
        # A line once there are two intervals of reports (10 s each on this range; the daemon reports every second).
        ui.wait_for_function(f"(el) => ({LINE_PIXELS})(el) > 20", arg=cpu.element_handle(), timeout=30_000)
        for chart in ("memory", "network", "disk_io", "disk_free", "gpu", "gpu_memory"):
            assert ui.locator(f"[data-chart={chart}] canvas").count() == 1, chart
        # One line per GPU, each at what the device reports.
        gpu_now = ui.locator("[data-chart=gpu] .chart-now")
        gpu_now.get_by_text("GPU 0 42%").wait_for()
        gpu_now.get_by_text("GPU 1 7%").wait_for()
        ui.locator("[data-chart=gpu_memory] .chart-now").get_by_text("GPU 0 20 GB").wait_for()

        # Forced off: the property and the daemon's own account of it.
        client.call("workers.set_runtime_properties",
                    {"worker": worker, "runtime_properties": [{"key": "force", "value": "off", "expiry": 3600}]})
        ui.get_by_text("force = off").wait_for()
        ui.locator(".worker-state-text", has_text="forced off").wait_for()

        with ui.expect_request(lambda r: r.url.endswith("/workers.get_stats")
                               and json.loads(r.post_data or "{}").get("interval") == 60) as asked:
            ui.get_by_role("button", name="Hour", exact=True).click()
        assert json.loads(asked.value.post_data or "{}")["worker_ids"] == [worker]
        ui.wait_for_function("(el) => Number(el.dataset.points) > 0", arg=cpu.element_handle())
        assert cpu.evaluate(LINE_PIXELS) > 0, "the CPU chart shows no data on the hour"
        ui.get_by_role("button", name="10 min", exact=True).click()
        ui.wait_for_function(f"(el) => ({LINE_PIXELS})(el) > 20", arg=cpu.element_handle())
        screenshot(ui, "worker-charts")

        # A stopped daemon unregisters: the page says so and keeps what it reported.
        daemon.stop()
        ui.get_by_text("This worker is not reporting").wait_for()
        cpu.evaluate("(el) => { el.dataset.points = 'stale'; }")  # so that only a fresh drawing counts below
        ui.get_by_role("button", name="Hour", exact=True).click()
        ui.wait_for_function("(el) => Number(el.dataset.points) > 0", arg=cpu.element_handle())
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.stop()
