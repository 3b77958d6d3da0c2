"""The task pages with a real agent: a task recorded by the clearml SDK is cloned, edited and enqueued in the page,
and the agent's run of it prints the edited value; a running task is aborted from the page. One agent run each (the
SDK task's environment installs clearml from the shared uv cache: the slowest test of the UI files)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from agentkit import DaemonProcess, enqueue, log_text, make_repo, wait_final, wait_status
from browserkit import screenshot, ui_page
from conftest import ServerProcess
from test_fidelity import sdk_env

TRAIN = """\
import argparse
from clearml import Task

task = Task.init(project_name="ui-agent", task_name="train", auto_connect_frameworks=False,
                 auto_resource_monitoring=False)
print("PAGE " + task.get_output_log_web_page())
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
args = p.parse_args()
print("LR %s" % args.lr)
try:
    import six
    print("SIX " + six.__version__)
except ImportError:
    print("NO SIX")
task.close()
"""
SLEEP = "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n"


def test_recorded_task_is_cloned_edited_enqueued_and_run(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    work, bare = make_repo(tmp_path / "repos", {"train.py": TRAIN, "sleep.py": SLEEP})
    local = subprocess.run([sys.executable, "train.py"], cwd=work, env=sdk_env(sqlite_server), capture_output=True,
                           text=True, timeout=420)
    assert local.returncode == 0, local.stdout + local.stderr
    # The SDK's results link lands on this server and opens the task's log in the UI.
    page_link = re.search(r"^PAGE (\S+)$", local.stdout, re.M)
    assert page_link, local.stdout
    recorded = re.search(r"/(?:experiments|tasks)/([0-9a-f]{32})/output/log$", page_link.group(1))
    assert recorded and page_link.group(1).startswith(sqlite_server.url + "/projects/"), page_link.group(1)
    opened = httpx.get(page_link.group(1))
    assert opened.status_code == 302 and opened.headers["location"] == f"/#/task/{recorded.group(1)}/log"
    source = recorded.group(1)

    client = sqlite_server.client()
    sleeper = client.call("tasks.create", {"name": "sleeper", "type": "training", "script": {
        "repository": f"file://{bare}", "branch": "main", "entry_point": "sleep.py"}})["id"]
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default")
    try:
        with ui_page(sqlite_server) as page:
            # Abort a running task from its page.
            enqueue(client, sleeper)
            wait_status(client, sleeper, "in_progress", timeout=120)
            page.goto(sqlite_server.url + f"/#/task/{sleeper}/log")
            page.get_by_text("sleeping").wait_for(timeout=60_000)
            page.locator(".task-actions").get_by_role("button", name="Abort").click()
            assert wait_final(client, sleeper, timeout=60)["status"] == "stopped"

            # Clone the recorded task, edit an Args value and the packages, enqueue it.
            page.goto(sqlite_server.url + f"/#/task/{source}/execution")
            page.get_by_role("button", name="Clone to edit").click()
            page.locator("dialog").get_by_role("button", name="Clone").click()
            form = page.locator("form[data-section=params]")
            form.locator("[data-param-section=Args] tr[data-param=lr]").get_by_label("Value").fill("0.5")
            form.get_by_role("button", name="Save").click()
            page.get_by_text("Hyper-parameters saved").wait_for()
            reqs = page.locator("form[data-section=requirements]").get_by_label("Python requirements")
            # The SDK recorded the six it found installed; the clone pins another one.
            lines = [line for line in reqs.input_value().splitlines() if not line.startswith("six")]
            reqs.fill("\n".join([*lines, "six==1.16.0"]) + "\n")
            page.locator("form[data-section=requirements]").get_by_role("button", name="Save").click()
            page.get_by_text("Python requirements saved").wait_for()
            clone = page.url.split("/#/task/")[1].split("/")[0]
            page.locator(".task-actions").get_by_role("button", name="Enqueue…").click()
            page.locator("dialog").get_by_role("button", name="Enqueue").click()
            page.click("[data-tab=log]")
            doc = wait_final(client, clone, timeout=240)
            text = log_text(client, clone)
            why = f"{doc.get('status_reason')}\n{text[-3000:]}\n{daemon.output()[-2000:]}"
            assert doc["status"] == "completed", why
            page.locator(".log").get_by_text("LR 0.5").wait_for()
            assert "SIX 1.16.0" in text, text[-3000:]
            screenshot(page, "task-agent-run")
    finally:
        daemon.stop()
    assert client.call("tasks.get_by_id", {"task": source})["task"]["hyperparams"]["Args"]["lr"]["value"] == "0.1"
