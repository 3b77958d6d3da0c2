"""The web UI in a real headless Chromium against a real server: each page renders what the API holds."""

from __future__ import annotations

from typing import Any

from browserkit import screenshot, ui  # noqa: F401 - ui is the fixture


def test_pages_render_in_a_real_browser(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    client = sqlite_server.client()
    queue = client.call("queues.create", {"name": "browser-q"})["id"]
    task = client.call("tasks.create", {"name": "browser-task", "type": "training"})["id"]
    client.call("tasks.enqueue", {"task": task, "queue": queue})
    ui.goto(sqlite_server.url + "/#/tasks")
    ui.get_by_text("browser-task").first.wait_for()
    screenshot(ui, "tasks")
    ui.click("[data-nav=queues]")
    ui.locator("section.card", has_text="browser-q").get_by_text("browser-task").wait_for()
    screenshot(ui, "queues")
    ui.click("[data-nav=workers]")
    ui.get_by_text("No workers are reporting").wait_for()
