"""What a ClearML user does first, on the Conveyor agent: record a run with the real `clearml` SDK, clone it, edit a
hyper-parameter, enqueue the clone; the real `clearml-agent` runs the same clone as a cross-check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentkit import (
    DaemonProcess,
    agent_env,
    create_task,
    enqueue,
    log_text,
    make_repo,
    reference_agent,
    reference_agent_env,
    wait_final,
    wait_for_line,
)
from conftest import ServerProcess
from conveyor.env.managers.base import find_uv

ARGPARSE_TRAIN = """\
import argparse, json
from clearml import Task

task = Task.init(project_name="fidelity", task_name="argparse", auto_connect_frameworks=False,
                 auto_resource_monitoring=False)
p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--foo-bar", type=int, default=1)
p.add_argument("--verbose", action="store_true")
p.add_argument("--layers", type=int, nargs="+", default=[1])
args = p.parse_args()
print("ARGS " + json.dumps(vars(args), sort_keys=True))
task.close()  # waits for the SDK's repository detection (at a bare exit it gives that 10 s, too few on a busy machine)
"""


def sdk_env(server: ServerProcess) -> dict[str, str]:
    conf = server.home / "sdk-clearml.conf"
    if not conf.exists():
        # The SDK forks its reporter process while its repository detection starts git: the fork can inherit git's
        # exec pipe and stall the detection for its whole 300 s (seen on a loaded machine; clearml's race, not the
        # agent's). Reporting from threads avoids it and changes nothing this file checks.
        conf.write_text(server.config_file.read_text() + "\nsdk.development.report_use_subprocess: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env.update(HOME=str(server.home), CLEARML_CONFIG_FILE=str(conf), PYTHONUNBUFFERED="1",
               CLEARML_LOG_LEVEL="WARNING")
    return env


def run_sdk(server: ServerProcess, code: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=sdk_env(server), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def args_line(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("ARGS ")]
    assert lines, f"the script printed no ARGS line:\n{text[-4000:]}"
    return json.loads(lines[-1][5:])


def record_and_clone(server: ServerProcess, tmp_path: Path, edits: dict[str, Any]) -> tuple[str, list[str]]:
    """A local run of ARGPARSE_TRAIN recorded by Task.init; then clones with `edits` set, as a user does in the UI.
    Returns the recorded task and the clones (not enqueued)."""
    work, _ = make_repo(tmp_path / "repos", {"train.py": ARGPARSE_TRAIN})
    # the SDK's repository detection is slow on a busy machine: close() waits for it up to 300 s
    local = subprocess.run([sys.executable, "train.py", "mydata", "--layers", "2", "3"], cwd=work,
                           env=sdk_env(server), capture_output=True, text=True, timeout=420)
    assert local.returncode == 0, local.stdout + local.stderr
    assert args_line(local.stdout) == {"data": "mydata", "foo_bar": 1, "layers": [2, 3], "verbose": False}
    code = f"""
from clearml import Task
source = Task.get_task(project_name="fidelity", task_name="argparse")
clones = []
for _ in range(2):
    clone = Task.clone(source_task=source, name="edited")
    for name, value in {edits!r}.items():
        clone.set_parameter(name, value)
    clones.append(clone.id)
print(source.id, *clones)
"""
    source, *clones = run_sdk(server, code, tmp_path).split()
    recorded = server.client().call("tasks.get_by_id", {"task": source})["task"]
    assert (recorded.get("script") or {}).get("entry_point") == "train.py", f"the SDK recorded no script: {recorded}"
    return source, clones


@pytest.mark.slow  # the same path as tests/test_task_edit.py's test of that name, run by the reference agent too
def test_edited_args_reach_an_argparse_script_through_the_sdk(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """Issue: the agent wrote `--foo_bar 7 --layers '[4, 5]'` on the command line and argparse refused it. Like the
    reference, the agent leaves argv alone and the SDK in the task applies the edited Args; clearml-agent 3.x, run
    on the other clone, prints the same."""
    source, (ours, theirs) = record_and_clone(sqlite_server, tmp_path, {"Args/foo_bar": 7, "Args/layers": "[4, 5]"})
    client = sqlite_server.client()
    recorded = client.call("tasks.get_by_id", {"task": source})["task"]
    assert recorded["hyperparams"]["Args"]["foo_bar"]["value"] == "1"
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default")
    try:
        enqueue(client, ours)
        doc = wait_final(client, ours, timeout=400)
    finally:
        daemon.stop()
    text = log_text(client, ours)
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text[-4000:]}"
    expected = {"data": "mydata", "foo_bar": 7, "layers": [4, 5], "verbose": False}
    assert args_line(text) == expected
    assert re.search(r"conveyor: running \S+ -u train.py in ", text), text  # argv untouched

    env = reference_agent_env(sqlite_server, tmp_path)
    subprocess.run([str(reference_agent()), "execute", "--id", theirs], env=env, capture_output=True, timeout=900)
    ref = client.call("tasks.get_by_id", {"task": theirs})["task"]
    ref_text = log_text(client, theirs)
    assert ref["status"] == "completed", f"{ref.get('status_reason')}\n{ref_text[-4000:]}"
    assert args_line(ref_text) == expected


PRINT_ENV = """\
import sys, importlib.metadata as md
print("PYTHON %d.%d" % sys.version_info[:2])
for name in ("six", "idna", "attrs"):
    try:
        print("HAVE", name, md.version(name))
    except md.PackageNotFoundError:
        print("LACK", name)
"""


def test_requirements_as_the_sdk_records_them(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """A freeze from the user's machine (conda build, editable checkout, Python header) runs here; a clone of the run
    installs the frozen list and keeps the user's original list in org_pip; uv.lock and the requirements.txt nearest
    the entry point are used when the task has no list."""
    other = "3.12"
    _, bare = make_repo(tmp_path / "repos", {"train.py": PRINT_ENV, "tools/train.py": PRINT_ENV,
                                             "tools/requirements.txt": "attrs==23.2.0\n"})
    _, locked = make_repo(tmp_path / "repos", {"train.py": PRINT_ENV, "pyproject.toml": """
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = ["idna==3.7"]

[tool.uv]
package = false
"""}, name="locked")
    work = tmp_path / "locked-work"
    subprocess.run(["git", "clone", "-q", str(locked), str(work)], check=True)
    assert subprocess.run([find_uv(), "lock"], cwd=work, capture_output=True).returncode == 0
    subprocess.run(["git", "add", "uv.lock"], cwd=work, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock"], cwd=work, check=True)
    subprocess.run(["git", "push", "-q", "origin", "main"], cwd=work, check=True)

    original = (f"# Python {other}.1 (main, Jan 29 2024, 16:03:57) [GCC 12.2.0]\n"
                "six @ file:///croot/six_1699000000000/work\n"
                "# Editable install with no version control (idna==3.7)\n-e /home/me/src/idna\n")
    client = sqlite_server.client()
    recorded = create_task(client, repository=f"file://{bare}", requirements=original)
    nearest = create_task(client, repository=f"file://{bare}", entry_point="tools/train.py")
    with_lock = create_task(client, repository=f"file://{locked}")
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default")
    try:
        for task in (recorded, nearest, with_lock):
            enqueue(client, task)
        docs = {task: wait_final(client, task, timeout=400) for task in (recorded, nearest, with_lock)}
        for task, doc in docs.items():
            assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{log_text(client, task)[-3000:]}"
        text = log_text(client, recorded)
        assert f"PYTHON {other}" in text and "HAVE idna 3.7" in text and "HAVE six" in text
        assert "-e /home/me/src/idna is a folder of the recording machine; installing idna==3.7 instead" in text
        first = docs[recorded]["script"]["requirements"]
        assert first["org_pip"] == original and "idna==3.7" in first["pip"]
        clone = client.call("tasks.clone", {"task": recorded})["id"]
        enqueue(client, clone)
        doc = wait_final(client, clone, timeout=400)
        assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{log_text(client, clone)[-3000:]}"
        assert doc["script"]["requirements"]["org_pip"] == original, "the clone's re-run kept the user's list"

        text = log_text(client, nearest)
        assert "HAVE attrs 23.2.0" in text and "from repository tools/requirements.txt" in text
        text = log_text(client, with_lock)
        assert "HAVE idna 3.7" in text and "LACK six" in text and "installing it with uv sync" in text
    finally:
        daemon.stop()


ABORTABLE = """\
import time
from clearml import Task

task = Task.init(project_name="fidelity", task_name="abortable", auto_connect_frameworks=False,
                 auto_resource_monitoring=False)

def on_abort():
    print("callback ran", flush=True)
    time.sleep(1)
    print("callback done", flush=True)

task.register_abort_callback(on_abort, callback_execution_timeout=30)
print("READY", flush=True)
for _ in range(1200):
    time.sleep(0.5)
"""
LOOPING = "import time\nprint('READY', flush=True)\nfor _ in range(1200):\n    time.sleep(0.5)\n"


def test_aborts_the_sdk_can_hear(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """An abort asks the task first: the SDK's abort callback runs to completion before the agent ends the process,
    and CLEARML_AGENT_ABORT_CALLBACK_CMD runs with the task's id; the task ends `stopped`, not failed."""
    _, bare = make_repo(tmp_path / "repos", {"abortable.py": ABORTABLE, "loop.py": LOOPING})
    client = sqlite_server.client()
    sdk_task = create_task(client, repository=f"file://{bare}", entry_point="abortable.py", requirements="clearml\n")
    cmd_task = create_task(client, repository=f"file://{bare}", entry_point="loop.py")
    env = agent_env(sqlite_server, tmp_path / "agent",
                    CLEARML_AGENT_ABORT_CALLBACK_CMD='echo "abort command for $CLEARML_TASK_ID"')
    daemon = DaemonProcess(sqlite_server, tmp_path / "agent", "--queue", "default", "--services-mode", "2",
                           env=env)
    try:
        for task in (sdk_task, cmd_task):
            enqueue(client, task)
        for task in (sdk_task, cmd_task):
            wait_for_line(client, task, "READY", timeout=300)
            client.call("tasks.stop", {"task": task})
        for task in (sdk_task, cmd_task):
            doc = wait_final(client, task, timeout=120)
            assert (doc["status"], doc["status_reason"]) == ("stopped", "task was stopped by tasks.stop"), doc
    finally:
        daemon.stop()
    text = log_text(client, sdk_task)
    assert "the task registered an abort callback; waiting up to 45 s" in text, text[-3000:]
    assert text.index("callback ran") < text.index("callback done")
    assert "abort callback completed" in text or "the task ended by itself" in text
    text = log_text(client, cmd_task)
    assert f"abort command for {cmd_task}" in text, text[-3000:]
    assert "the abort callback command ended with exit code 0" in text
