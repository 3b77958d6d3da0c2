"""The task pages in a real headless Chromium against a real server: a draft is edited in the page and the server
holds the edits; a task that ran is read-only with "Clone to edit"; the result tabs (scalars, plots, debug samples,
artifacts, log search, timeline) show what the task reported; the projects page; the task list fits the window."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
import zlib
from typing import Any

import httpx

from browserkit import screenshot, ui, ui_page  # noqa: F401 - ui is the fixture


def _png(width: int = 8, height: int = 8) -> bytes:
    """A small red PNG (a debug sample the page shows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _upload(server: Any, path: str, body: bytes) -> str:
    key, secret = server.credentials()
    basic = base64.b64encode(f"{key}:{secret}".encode()).decode()
    token = httpx.get(server.url + "/auth.login", headers={"Authorization": "Basic " + basic}).json()["data"]["token"]
    res = httpx.post(server.url + "/files/", files={path: (path, body, "application/octet-stream")},
                     headers={"Authorization": "Bearer " + token}, timeout=30)
    assert res.status_code == 200, res.text
    return f"{server.url}/files{path}"


def _no_page_scroll(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"


def test_draft_is_edited_in_the_page(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    client = sqlite_server.client()
    task = client.call("tasks.create", {
        "name": "draft-edit", "type": "training",
        "script": {"repository": "https://user:hunter2@example.com/r.git", "branch": "main", "entry_point": "train.py",
                   "requirements": {"pip": "numpy==1.26.4"}},
        "hyperparams": {"Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1", "type": "float"},
                                 "epochs": {"section": "Args", "name": "epochs", "value": "3"}},
                        "Old": {"x": {"section": "Old", "name": "x", "value": "1"}}},
        "configuration": {"General": {"name": "General", "value": "a: 1", "type": "yaml"},
                          "Obsolete": {"name": "Obsolete", "value": "old", "type": ""}}})["id"]
    ui.goto(sqlite_server.url + f"/#/task/{task}/execution")
    form = ui.locator("form[data-section=params]")
    lr = form.locator("[data-param-section=Args] tr[data-param=lr]")
    lr.get_by_label("Value").fill("0.25")
    form.locator("[data-param-section=Args] tr[data-param=epochs]").get_by_label("Delete parameter").click()
    form.locator("[data-param-section=Old]").get_by_role("button", name="Delete section").click()
    form.get_by_label("New section name").fill("General")
    form.get_by_role("button", name="Add section").click()
    new = form.locator("[data-param-section=General] tr.param").last
    new.get_by_label("Name").fill("seed")
    new.get_by_label("Value").fill("7")
    form.get_by_role("button", name="Save").click()
    ui.get_by_text("Hyper-parameters saved").wait_for()

    # The repository is shown without its password, and saving another field keeps the stored one.
    source = ui.locator("form[data-section=source]")
    assert source.locator("input[name=repository]").input_value() == "https://example.com/r.git"
    source.locator("input[name=branch]").fill("feature")
    source.get_by_role("button", name="Save").click()
    ui.get_by_text("Source saved").wait_for()
    reqs = ui.locator("form[data-section=requirements]")
    reqs.get_by_label("Python requirements").fill("numpy==1.26.4\nrequests==2.32.3")
    reqs.get_by_role("button", name="Save").click()
    ui.get_by_text("Python requirements saved").wait_for()
    container = ui.locator("form[data-section=container]")
    container.locator("input[name=image]").fill("python:3.12-slim")
    container.locator("textarea[name=setup_shell_script]").fill("apt-get install -y git")
    container.get_by_role("button", name="Save").click()
    ui.get_by_text("Container saved").wait_for()
    config = ui.locator("form[data-section=config]")
    config.get_by_label("General", exact=True).fill("a: 2")
    config.locator("[data-config=Obsolete]").get_by_role("button", name="Delete").click()
    config.get_by_role("button", name="Save").click()
    ui.get_by_text("Configuration objects saved").wait_for()
    screenshot(ui, "task-edit")

    doc = client.call("tasks.get_by_id", {"task": task})["task"]
    params = {s: {n: p["value"] for n, p in v.items()} for s, v in doc["hyperparams"].items()}
    assert params == {"Args": {"lr": "0.25"}, "General": {"seed": "7"}}
    assert doc["script"]["branch"] == "feature" and doc["script"]["repository"].endswith("hunter2@example.com/r.git")
    assert doc["script"]["requirements"]["pip"] == "numpy==1.26.4\nrequests==2.32.3"
    assert doc["container"]["image"] == "python:3.12-slim"
    assert doc["container"]["setup_shell_script"] == "apt-get install -y git"
    assert doc["configuration"]["General"]["value"] == "a: 2" and "Obsolete" not in doc["configuration"]

    # A parameter without a name is refused in the banner, and nothing is sent.
    form = ui.locator("form[data-section=params]")
    form.locator("[data-param-section=Args]").get_by_role("button", name="Add parameter").click()
    form.get_by_role("button", name="Save").click()
    ui.locator("#banner").get_by_text("Every parameter needs a name (section Args)").wait_for()
    assert client.call("tasks.get_by_id", {"task": task})["task"]["hyperparams"]["Args"].keys() == {"lr"}


def test_a_task_that_ran_is_read_only_and_clone_opens_a_draft(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    client = sqlite_server.client()
    queue = client.call("queues.create", {"name": f"ro-{secrets.token_hex(3)}"})["id"]
    task = client.call("tasks.create", {"name": "ran-once", "type": "training", "hyperparams": {
        "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1"}}}})["id"]
    client.call("tasks.enqueue", {"task": task, "queue": queue})
    ui.goto(sqlite_server.url + f"/#/task/{task}/execution")
    ui.get_by_text("Read-only: this task is queued").wait_for()
    assert ui.locator(".execution input, .execution textarea").count() == 0
    assert ui.locator(".execution td", has_text="0.1").count() == 1
    ui.get_by_role("button", name="Clone to edit").click()
    ui.locator("dialog").get_by_role("button", name="Clone").click()
    ui.locator("form[data-section=params]").wait_for()
    clone = ui.url.split("/#/task/")[1].split("/")[0]
    assert clone != task and ui.url.endswith("/execution")
    assert client.call("tasks.get_by_id", {"task": clone})["task"]["status"] == "created"
    # The timeline of the task that ran: its status changes, from the server's status_history.
    ui.goto(sqlite_server.url + f"/#/task/{task}/timeline")
    queued = ui.locator(".timeline-list li[data-status=queued]")
    queued.get_by_text("from Draft").wait_for()
    assert ui.locator(".timeline-list li").count() == 2 and ui.locator(".timeline-bar span").count() == 2
    screenshot(ui, "task-timeline")


def _reported_task(server: Any) -> str:
    client = server.client()
    task = client.call("tasks.create", {"name": "reported", "type": "training"})["id"]
    image = _upload(server, f"/ui-test/{task}/metrics/sample.png", _png())
    model = _upload(server, f"/ui-test/{task}/artifacts/weights/weights.bin", b"w" * 2048)
    client.call("tasks.add_or_update_artifacts", {"task": task, "artifacts": [
        {"key": "weights", "type": "custom", "mode": "output", "uri": model, "hash": "abc123", "content_size": 2048},
        {"key": "remote", "type": "str", "mode": "output", "uri": "s3://bucket/data.csv", "content_size": 10}]})
    scatter = {"data": [{"type": "scatter", "mode": "lines", "name": "curve", "x": [0, 1, 2], "y": [0, 1, 4]}],
               "layout": {"title": "roc"}}
    table = {"data": [{"type": "table", "header": {"values": ["epoch", "acc"]},
                       "cells": {"values": [[1, 2], ["0.5", "0.9"]]}}], "layout": {}}
    heat = {"data": [{"type": "heatmap", "z": [[1, 2], [3, 4]]}], "layout": {"title": "confusion"}}
    events: list[dict[str, Any]] = [{"task": task, "type": "log", "msg": f"step {i} loss {1 / (i + 1):.3f}"}
                                    for i in range(30)]
    events += [{"task": task, "type": "log", "msg": m} for m in ("needle in the log", "Needle again")]
    events += [{"task": task, "type": "training_stats_scalar", "metric": "loss", "variant": v, "iter": i,
                "value": i * k} for i in range(10) for v, k in (("train", 1.0), ("val", 1.5))]
    events += [{"task": task, "type": "training_stats_scalar", "metric": "Summary", "variant": "best_acc",
                "iter": -(2**31), "value": 0.975}]  # Logger.report_single_value
    events += [{"task": task, "type": "plot", "metric": m, "variant": "v", "iter": 1, "plot_str": json.dumps(f)}
               for m, f in (("roc", scatter), ("scores", table), ("confusion", heat))]
    events += [{"task": task, "type": "training_debug_image", "metric": "samples", "variant": "input", "iter": 3,
                "url": image}]
    client.call("events.add_batch", {"requests": events})
    return task


def test_result_tabs_show_what_the_task_reported(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    task = _reported_task(sqlite_server)
    base = sqlite_server.url + f"/#/task/{task}"
    ui.goto(base + "/log")
    ui.get_by_text("needle in the log").wait_for()
    ui.get_by_label("Search the log").fill("needle")
    ui.get_by_text("1 / 2").wait_for()
    assert ui.locator(".log mark").count() == 2 and ui.locator(".log mark.current").inner_text() == "needle"
    ui.get_by_label("Search the log").press("Enter")
    ui.get_by_text("2 / 2").wait_for()
    assert ui.locator(".log mark.current").inner_text() == "Needle"
    ui.get_by_text("Only matching lines").click()
    assert ui.locator(".log .ln:visible").count() == 2
    screenshot(ui, "task-log-search")

    ui.click("[data-tab=scalars]")
    chart = ui.locator("[data-chart=loss]")
    chart.locator("canvas").wait_for()
    legend = chart.locator(".u-legend")
    assert legend.get_by_text("train").count() == 1 and legend.get_by_text("val").count() == 1
    assert ui.locator(".single-values tr", has_text="Summary / best_acc").locator("td.num").inner_text() == "0.975"
    assert ui.locator("[data-chart=Summary]").count() == 0
    # Drag across the chart to zoom in on iterations 3..6; a double-click zooms out again.
    x_range = "(box) => [box.uplot.scales.x.min, box.uplot.scales.x.max]"
    plot = chart.locator(".uplot-box")
    assert plot.evaluate(x_range) == [0, 9]
    over = chart.locator(".u-over").bounding_box()
    assert over
    ui.mouse.move(over["x"] + over["width"] * 0.3, over["y"] + over["height"] / 2)
    ui.mouse.down()
    ui.mouse.move(over["x"] + over["width"] * 0.7, over["y"] + over["height"] / 2, steps=5)
    ui.mouse.up()
    low, high = plot.evaluate(x_range)
    assert 2 < low < 3.5 and 5.5 < high < 7, (low, high)
    chart.locator(".u-over").dblclick()
    assert plot.evaluate(x_range) == [0, 9]
    screenshot(ui, "task-scalars")

    ui.click("[data-tab=plots]")
    ui.locator("[data-chart='roc / v'] canvas").wait_for()
    ui.locator(".plot td", has_text="0.9").wait_for()
    ui.get_by_text("A heatmap figure “confusion” with 1 trace").wait_for()
    screenshot(ui, "task-plots")

    ui.click("[data-tab=debug]")
    img = ui.locator("[data-sample='samples/input'] img")
    ui.wait_for_function("(img) => img.src.startsWith('data:image/png') && img.naturalWidth === 8",
                         arg=img.element_handle())
    screenshot(ui, "task-debug-samples")

    ui.click("[data-tab=artifacts]")
    row = ui.locator("tr[data-artifact=weights]")
    row.get_by_text("2 KB").wait_for()
    assert row.get_by_text("abc123").count() == 1
    with ui.expect_download() as download:
        row.get_by_role("button", name="Download").click()
    assert open(download.value.path(), "rb").read() == b"w" * 2048
    # Not on this server: shown, never fetched with the token.
    assert ui.locator("tr[data-artifact=remote]").get_by_role("button").count() == 0
    screenshot(ui, "task-artifacts")

    ui.click("[data-tab=timeline]")
    ui.locator(".timeline-list li[data-status=created]").wait_for()


def test_projects_page_and_the_task_list_fit_the_window(sqlite_server: Any) -> None:
    client = sqlite_server.client()
    project = client.call("projects.create", {"name": "vision-" + secrets.token_hex(2)})["id"]
    other = client.call("projects.create", {"name": "audio-" + secrets.token_hex(2)})["id"]
    queue = client.call("queues.create", {"name": f"pq-{secrets.token_hex(3)}"})["id"]
    for i in range(3):
        client.call("tasks.create", {"name": f"vision-task-{i}-with-a-rather-long-name-that-could-push-columns",
                                     "type": "training", "project": project})
    queued = client.call("tasks.create", {"name": "audio-task", "type": "training", "project": other})["id"]
    draft = client.call("tasks.create", {"name": "audio-draft", "type": "training", "project": other, "hyperparams": {
        "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1", "type": "float"}}}})["id"]
    client.call("tasks.enqueue", {"task": queued, "queue": queue})
    with ui_page(sqlite_server) as page:
        page.goto(sqlite_server.url + "/#/projects")
        row = page.locator(f"tr[data-project='{project}']")
        row.wait_for()
        # total, drafts, queued
        assert [c.strip() for c in row.locator("td.num").all_inner_texts()[:3]] == ["3", "3", "0"]
        assert page.locator(f"tr[data-project='{other}'] td.num").all_inner_texts()[:3] == ["2", "1", "1"]
        screenshot(page, "projects")
        row.locator("a").first.click()
        page.get_by_text("vision-task-2-with").wait_for()
        page.locator(".project-filter").get_by_text("vision-").wait_for()
        assert page.get_by_text("audio-task").count() == 0
        assert page.locator("tbody tr").count() == 3
        _no_page_scroll(page)
        last = page.locator("thead th").last.bounding_box()
        assert last and last["x"] + last["width"] <= 1400, "the task list is cut off on the right at 1400 px"
        page.goto(sqlite_server.url + "/#/tasks")
        page.get_by_text("audio-task").wait_for()
        screenshot(page, "tasks-1400")
    for width in (1920, 420):
        with ui_page(sqlite_server, width=width) as page:
            page.goto(sqlite_server.url + "/#/tasks")
            page.get_by_text("audio-task").wait_for()
            _no_page_scroll(page)
            actions = page.locator("tbody tr").first.locator("td.actions")
            box = actions.bounding_box()
            assert box and box["x"] + box["width"] <= width, f"the row's actions are off the page at {width} px"
            screenshot(page, f"tasks-{width}")
            page.goto(sqlite_server.url + f"/#/task/{queued}/execution")
            page.get_by_text("Read-only").wait_for()
            _no_page_scroll(page)
            page.goto(sqlite_server.url + f"/#/task/{draft}/execution")
            page.locator("form[data-section=params] tr[data-param=lr]").wait_for()
            _no_page_scroll(page)
            screenshot(page, f"task-edit-{width}")


def test_a_refused_edit_is_explained_in_the_banner(sqlite_server: Any) -> None:
    """Another user's draft: the server refuses the edit (403) and the page says why; the edit stays in the form."""
    admin = sqlite_server.client()
    name = f"alice-{secrets.token_hex(3)}"
    admin.call("users.create", {"name": name, "role": "user"})
    creds = admin.call("auth.create_credentials", {"user": name, "label": "browser"})["credentials"]
    task = admin.call("tasks.create", {"name": "admins-draft", "type": "training", "hyperparams": {
        "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1"}}}})["id"]
    with ui_page(sqlite_server, expected_errors=("status of 403",)) as page:
        page.click("#logout")
        page.fill("#login-key", creds["access_key"])
        page.fill("#login-secret", creds["secret_key"])
        page.click("#login-submit")
        page.goto(sqlite_server.url + f"/#/task/{task}/execution")
        value = page.locator("form[data-section=params] tr[data-param=lr]").get_by_label("Value")
        value.fill("9")
        page.locator("form[data-section=params]").get_by_role("button", name="Save").click()
        banner = page.locator("#banner")
        banner.get_by_text(f"belongs to {admin.call('users.get_current_user')['user']['name']}").wait_for()
        assert "403" in banner.locator(".where").inner_text()
        page.wait_for_timeout(2500)  # a refresh of the task does not draw over the unsaved edit
        assert value.input_value() == "9"
    assert admin.call("tasks.get_by_id", {"task": task})["task"]["hyperparams"]["Args"]["lr"]["value"] == "0.1"


def test_a_debug_sample_url_is_a_link_only_when_it_is_a_web_address(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    """Any client reports a debug image's URL: one the browser would run (javascript:) or that is no web address
    (s3://) is shown as text, never made a link another user clicks."""
    client = sqlite_server.client()
    task = client.call("tasks.create", {"name": "odd-samples", "type": "training"})["id"]
    client.call("events.add_batch", {"requests": [
        {"task": task, "type": "training_debug_image", "metric": "samples", "variant": variant, "iter": 1, "url": url}
        for variant, url in (("script", "javascript:alert(document.domain)"), ("bucket", "s3://bucket/a.png"),
                             ("web", "https://images.example.test/a.png"))]})
    ui.goto(sqlite_server.url + f"/#/task/{task}/debug")
    ui.locator("[data-sample='samples/web'] a").wait_for()
    assert ui.locator("[data-sample='samples/web'] a").get_attribute("href") == "https://images.example.test/a.png"
    for variant in ("script", "bucket"):
        card = ui.locator(f"[data-sample='samples/{variant}']")
        card.get_by_text("Stored outside this server").wait_for()
        assert card.locator("a").count() == 0, card.inner_html()


def test_edited_packages_replace_the_list_a_run_froze(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    """A clone of a task that ran holds the frozen list in `pip` and the user's original in `org_pip` (agents with
    force_original_requirements install that one). Packages edited in the page are the new list: the old original
    goes with the frozen one, as `conveyor task edit --packages` does, so the edit is what any agent installs."""
    client = sqlite_server.client()
    task = client.call("tasks.create", {"name": "frozen-reqs", "type": "training", "script": {
        "entry_point": "train.py", "requirements": {"pip": "numpy==1.26.4\nsix==1.16.0", "org_pip": "numpy",
                                                    "conda": "python=3.12"}}})["id"]
    ui.goto(sqlite_server.url + f"/#/task/{task}/execution")
    reqs = ui.locator("form[data-section=requirements]")
    assert reqs.get_by_label("Python requirements").input_value() == "numpy==1.26.4\nsix==1.16.0"
    reqs.get_by_label("Python requirements").fill("numpy\ntorch")
    reqs.get_by_role("button", name="Save").click()
    ui.get_by_text("Python requirements saved").wait_for()
    doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["script"]["requirements"] == {"pip": "numpy\ntorch", "conda": "python=3.12"}


def test_a_new_branch_in_the_page_runs_that_branch_not_the_recorded_commit(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    """The agent checks out the recorded commit when there is one: a branch (or repository) changed in the page
    leaves that commit behind unless a commit is given with it, and a new repository drops the diff made against
    the old one, as `conveyor task edit` does."""
    client = sqlite_server.client()
    script = {"repository": "https://example.com/r.git", "branch": "main", "version_num": "a" * 40,
              "entry_point": "train.py", "diff": "--- a/x\n+++ b/x\n"}
    task = client.call("tasks.create", {"name": "new-branch", "type": "training", "script": script})["id"]
    ui.goto(sqlite_server.url + f"/#/task/{task}/execution")
    source = ui.locator("form[data-section=source]")
    source.locator("input[name=branch]").fill("dev")
    source.get_by_role("button", name="Save").click()
    ui.get_by_text("The recorded commit is dropped: the agent runs the head of the branch").wait_for()
    doc = client.call("tasks.get_by_id", {"task": task})["task"]["script"]
    assert (doc["branch"], doc["version_num"], doc["diff"]) == ("dev", "", script["diff"])

    pinned = client.call("tasks.create", {"name": "pinned", "type": "training", "script": script})["id"]
    ui.goto(sqlite_server.url + f"/#/task/{pinned}/execution")
    source = ui.locator("form[data-section=source]")
    source.locator("input[name=repository]").fill("https://example.com/other.git")
    source.locator("input[name=version_num]").fill("b" * 40)
    source.get_by_role("button", name="Save").click()
    ui.get_by_text("The uncommitted changes of the old repository are dropped").wait_for()
    doc = client.call("tasks.get_by_id", {"task": pinned})["task"]["script"]
    assert (doc["repository"], doc["version_num"], doc["diff"]) == ("https://example.com/other.git", "b" * 40, "")


def test_a_section_saved_twice_while_another_has_unsaved_edits_sends_what_changed(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    """While one section holds unsaved edits the page is not redrawn, so a section saved meanwhile must take what
    it saved as its new starting point: a parameter renamed twice ends under its last name only."""
    client = sqlite_server.client()
    task = client.call("tasks.create", {"name": "saved-twice", "type": "training", "hyperparams": {
        "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1"}}}})["id"]
    ui.goto(sqlite_server.url + f"/#/task/{task}/execution")
    ui.locator("form[data-section=container] input[name=image]").fill("python:3.12-slim")  # unsaved
    form = ui.locator("form[data-section=params]")
    name = form.locator("tr.param").first.get_by_label("Name")
    name.fill("rate")
    form.get_by_role("button", name="Save").click()
    ui.get_by_text("Hyper-parameters saved").wait_for()
    name.fill("step_size")
    form.get_by_role("button", name="Save").click()
    ui.get_by_text("Hyper-parameters saved").last.wait_for()
    ui.wait_for_function("() => document.querySelectorAll('.toast').length >= 2")
    args = client.call("tasks.get_by_id", {"task": task})["task"]["hyperparams"]["Args"]
    assert list(args) == ["step_size"], args
    assert ui.locator("form[data-section=container] input[name=image]").input_value() == "python:3.12-slim"


def test_credentials_typed_into_the_repository_are_not_stored(ui: Any, sqlite_server: Any) -> None:  # noqa: F811
    """Every user reads every task: a token pasted into the repository URL would be everyone's. The page stores
    the URL without user:password@ (agents use their own git credentials), as `conveyor task edit --repo` does,
    and keeps ssh's `git@` user."""
    client = sqlite_server.client()
    script = {"repository": "https://example.com/r.git", "entry_point": "t.py"}
    task = client.call("tasks.create", {"name": "typed-token", "type": "training", "script": script})["id"]
    ui.goto(sqlite_server.url + f"/#/task/{task}/execution")
    source = ui.locator("form[data-section=source]")
    source.locator("input[name=repository]").fill("https://bob:ghp_s3cr3t@example.com/other.git")
    source.get_by_role("button", name="Save").click()
    ui.get_by_text("The credentials in the repository URL are not stored").wait_for()
    assert client.call("tasks.get_by_id", {"task": task})["task"]["script"]["repository"] == \
        "https://example.com/other.git"
    source.locator("input[name=repository]").fill("ssh://git@example.com/team/r.git")
    source.get_by_role("button", name="Save").click()
    deadline = time.time() + 15
    while (repo := client.call("tasks.get_by_id", {"task": task})["task"]["script"]["repository"]) != \
            "ssh://git@example.com/team/r.git":
        assert time.time() < deadline, repo
        time.sleep(0.2)
