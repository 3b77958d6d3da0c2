"""Editing tasks: `conveyor task edit` and the server's edit calls (the ones the web UI makes), the status history
of a task, and, with a real agent daemon, that what was edited is what runs: Args through argparse and the SDK,
General through task.connect, the packages installed, the container image."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _api import module_server
from agentkit import DaemonProcess, agent_env, log_text, make_repo, wait_final
from conftest import ServerProcess
from conveyor.client import ApiClient
from conveyor.client.errors import ApiCallError

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
REPO_URL = "https://git.example.test/team/models.git"


# --- fixtures and helpers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def edit_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per database for the module's API and CLI tests: each test makes tasks of its own."""
    with module_server(request.param, tmp_path_factory.mktemp(f"edit-{request.param}") / "home") as proc:
        yield proc


@pytest.fixture
def api(edit_server: ServerProcess) -> Iterator[ApiClient]:
    with edit_server.client() as client:
        yield client


def conveyor(server: ServerProcess, *args: str, expect: int = 0,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True, text=True, cwd=cwd,
                            env={**server.env(), **GIT_ENV}, timeout=60)
    assert result.returncode == expect, f"conveyor {' '.join(args)}: rc {result.returncode}\n{result.stdout}\n" \
                                        f"{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def draft(api: ApiClient, **fields: Any) -> str:
    """A draft task recorded as `conveyor task create --repo URL` records one, with an Args section."""
    body = {"name": f"edit-{uuid.uuid4().hex[:8]}", "type": "training",
            "script": {"repository": REPO_URL, "branch": "main", "version_num": "a" * 40, "entry_point": "train.py",
                       "working_dir": ".", "diff": "--- a/x\n+++ b/x\n", "requirements": {"pip": "six==1.16.0\n"}},
            "hyperparams": {"Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1", "type": "",
                                            "description": ""}}},
            **fields}
    return api.call("tasks.create", body)["id"]


def task_of(api: ApiClient, task: str) -> dict[str, Any]:
    return api.call("tasks.get_by_id", {"task": task})["task"]


def refusal(api: ApiClient, endpoint: str, body: dict[str, Any]) -> ApiCallError:
    with pytest.raises(ApiCallError) as caught:
        api.call(endpoint, body)
    assert caught.value.code == 400, caught.value
    return caught.value


def a_queue(api: ApiClient) -> str:
    return api.call("queues.create", {"name": f"edit-q-{uuid.uuid4().hex[:8]}"})["id"]


# --- the server's edit calls --------------------------------------------------------------------------------------
def test_every_part_of_a_draft_is_editable_through_the_calls_the_ui_makes(api: ApiClient) -> None:
    task = draft(api)
    # hyper-parameters: add and change in any section, then delete one and a whole section
    api.call("tasks.edit_hyper_params", {"task": task, "hyperparams": [
        {"section": "Args", "name": "lr", "value": "0.01"},
        {"section": "General", "name": "epochs", "value": 5, "type": "int"},
        {"section": "properties", "name": "owner", "value": "ml-team"},
        {"section": "Extra", "name": "a", "value": "1"}, {"section": "Extra", "name": "b", "value": "2"}]})
    assert api.call("tasks.delete_hyper_params", {"task": task, "hyperparams": [
        {"section": "properties", "name": "owner"}, {"section": "Extra"}]}) == {"deleted": 3}
    params = task_of(api, task)["hyperparams"]
    assert params == {
        "Args": {"lr": {"section": "Args", "name": "lr", "value": "0.01", "type": "", "description": ""}},
        "General": {"epochs": {"section": "General", "name": "epochs", "value": "5", "type": "int",
                               "description": ""}}}
    # configuration objects: add, change, delete
    api.call("tasks.edit_configuration", {"task": task, "configuration": [
        {"name": "train.yaml", "value": "batch: 32\n", "type": "yaml"}, {"name": "old", "value": "x"}]})
    api.call("tasks.edit_configuration", {"task": task, "configuration": [
        {"name": "train.yaml", "value": "batch: 64\n", "type": "yaml"}]})
    assert api.call("tasks.delete_configuration", {"task": task, "configuration": ["old", "missing"]}) == \
        {"deleted": 1}
    got = api.call("tasks.get_configurations", {"tasks": [task]})["configurations"][0]["configuration"]
    assert got == [{"name": "train.yaml", "value": "batch: 64\n", "type": "yaml", "description": ""}]
    # packages, container, code: requirements replace the list; a partial script keeps the rest
    answer = api.call("tasks.set_requirements", {"task": task, "requirements": {"pip": "idna==3.7\n"}})
    assert answer == {"updated": 1, "fields": {"script.requirements": {"pip": "idna==3.7\n"}}}
    answer = api.call("tasks.edit", {"task": task, "container": {
        "image": "python:3.11-slim", "arguments": "--ipc=host", "setup_shell_script": "export A=1\n"},
        "script": {"branch": "dev", "entry_point": "tools/train.py", "working_dir": "src"}})
    assert answer["updated"] == 1 and answer["fields"]["container"]["image"] == "python:3.11-slim"
    doc = task_of(api, task)
    assert doc["container"] == {"image": "python:3.11-slim", "arguments": "--ipc=host",
                                "setup_shell_script": "export A=1\n"}
    assert doc["script"] == {"repository": REPO_URL, "branch": "dev", "version_num": "a" * 40,
                             "entry_point": "tools/train.py", "working_dir": "src", "diff": "--- a/x\n+++ b/x\n",
                             "requirements": {"pip": "idna==3.7\n"}}


def test_a_task_that_is_not_a_draft_is_not_edited_unless_forced(api: ApiClient) -> None:
    task = draft(api)
    api.call("tasks.enqueue", {"task": task, "queue": a_queue(api)})
    edits = [("tasks.edit", {"comment": "changed"}),
             ("tasks.edit_hyper_params", {"hyperparams": [{"section": "Args", "name": "lr", "value": "9"}]}),
             ("tasks.delete_hyper_params", {"hyperparams": [{"section": "Args", "name": "lr"}]}),
             ("tasks.edit_configuration", {"configuration": [{"name": "c", "value": "v"}]}),
             ("tasks.delete_configuration", {"configuration": ["c"]})]
    for endpoint, body in edits:
        error = refusal(api, endpoint, {"task": task, **body})
        assert "is queued" in error.msg and "clone it" in error.msg, (endpoint, error.msg)
    assert task_of(api, task)["hyperparams"]["Args"]["lr"]["value"] == "0.1"
    for endpoint, body in edits:  # what the SDK and agents do to the task they run
        api.call(endpoint, {"task": task, "force": True, **body})
    doc = task_of(api, task)
    assert doc["comment"] == "changed" and "lr" not in doc["hyperparams"].get("Args", {})


@pytest.mark.parametrize(("endpoint", "body", "says"), [
    ("tasks.edit_hyper_params", {"hyperparams": "lr=1"}, "'hyperparams' must be a list"),
    ("tasks.edit_hyper_params", {"hyperparams": [{"section": "Args", "value": "1"}]}, "non-empty string 'name'"),
    ("tasks.edit_hyper_params", {"hyperparams": [{"name": "x", "value": {"a": 1}}]}, "'value' must be a string"),
    ("tasks.edit_hyper_params", {"hyperparams": [{"name": "x"}], "replace_hyperparams": "some"},
     "one of none, section, all"),
    ("tasks.edit_hyper_params", {}, "hyperparams"),
    ("tasks.delete_hyper_params", {"hyperparams": [{"section": 3}]}, "string 'section'"),
    ("tasks.edit_configuration", {"configuration": [{"name": "c", "value": {"k": 1}}]}, "the configuration's text"),
    ("tasks.edit_configuration", {"configuration": {"name": "c"}}, "must be a list"),
    ("tasks.delete_configuration", {"configuration": [3]}, "list of strings"),
    ("tasks.set_requirements", {"requirements": "numpy"}, "must be an object"),
    ("tasks.set_requirements", {"requirements": {"pip": 3}}, "text (one requirement a line)"),
    ("tasks.edit", {"container": {"image": 3}}, "container 'image' must be a string"),
    ("tasks.edit", {"container": "python:3.11"}, "must be an object"),
    ("tasks.edit", {"script": {"branch": ["dev"]}}, "script 'branch' must be a string"),
    ("tasks.edit", {"hyperparams": {"Args": {"lr": "0.1"}}}, "Args/lr must be an object"),
    ("tasks.edit", {"configuration": {"c": "text"}}, "configuration item 'c' must be an object"),
    ("tasks.edit", {"project": "f" * 32}, "f" * 32),
])
def test_bad_edits_are_clear_400s_that_change_nothing(api: ApiClient, endpoint: str, body: dict[str, Any],
                                                       says: str) -> None:
    task = draft(api)
    before = task_of(api, task)
    error = refusal(api, endpoint, {"task": task, **body})
    assert says in error.msg, error.msg
    after = task_of(api, task)
    assert {k: v for k, v in after.items() if k != "last_update"} == \
        {k: v for k, v in before.items() if k != "last_update"}


@pytest.mark.parametrize(("body", "says"), [
    ({"new_task_hyperparams": {"Args": {"lr": "0.1"}}}, "Args/lr must be an object"),
    ({"new_task_hyperparams": {"Args": "lr=0.1"}}, "section 'Args' must be an object"),
    ({"new_task_configuration": {"c": "text"}}, "configuration item 'c' must be an object"),
    ({"new_task_container": {"image": 3}}, "container 'image' must be a string"),
])
def test_a_clone_with_bad_new_fields_is_a_clear_400_and_no_broken_draft(api: ApiClient, body: dict[str, Any],
                                                                         says: str) -> None:
    """tasks.clone's new_task_hyperparams/configuration/container are what tasks.edit takes: checked the same way,
    so that no draft holds a shape the edit calls, the UI and the agent then trip over."""
    task = draft(api)
    count = len(api.call("tasks.get_all", {"parent": task, "only_fields": ["id"]})["tasks"])
    error = refusal(api, "tasks.clone", {"task": task, **body})
    assert says in error.msg, error.msg
    assert len(api.call("tasks.get_all", {"parent": task, "only_fields": ["id"]})["tasks"]) == count


def test_a_clone_with_new_hyperparams_stores_them_as_an_edit_would(api: ApiClient) -> None:
    clone = api.call("tasks.clone", {"task": draft(api), "new_task_hyperparams": {
        "Args": {"lr": {"value": 0.5, "type": "float"}}}})["id"]
    assert task_of(api, clone)["hyperparams"]["Args"]["lr"] == {
        "section": "Args", "name": "lr", "value": "0.5", "type": "float", "description": ""}
    api.call("tasks.edit_hyper_params", {"task": clone, "hyperparams": [
        {"section": "Args", "name": "x", "value": "1"}]})


def test_status_changes_answer_as_the_reference_and_are_recorded_in_the_history(edit_server: ServerProcess,
                                                                                 api: ApiClient) -> None:
    task = draft(api)
    queue = a_queue(api)
    user = api.call("users.get_current_user", {})["user"]["id"]
    answer = api.call("tasks.enqueue", {"task": task, "queue": queue, "status_reason": "try it"})
    assert answer["updated"] == 1 and answer["queued"] == 1
    assert answer["fields"]["status"] == "queued" and answer["fields"]["execution.queue"] == queue
    answer = api.call("tasks.dequeue", {"task": task})
    assert answer["updated"] == 1 and answer["dequeued"] == 1 and answer["fields"]["status"] == "created"
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    answer = api.call("tasks.started", {"task": task, "status_message": "Changed by conveyor box:0"})
    assert answer["started"] == 1 and answer["updated"] == 1 and answer["fields"]["status"] == "in_progress"
    answer = api.call("tasks.started", {"task": task, "force": True})  # a second start: no new entry
    answer = api.call("tasks.failed", {"task": task, "status_reason": "boom", "status_message": "Changed by conveyor "
                                                                                                 "box:0"})
    assert answer["updated"] == 1 and answer["fields"]["status"] == "failed"
    assert answer["fields"]["status_reason"] == "boom"
    answer = api.call("tasks.reset", {"task": task})
    assert answer["updated"] == 1 and answer["fields"]["status"] == "created"
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    answer = api.call("tasks.stop", {"task": task})
    assert answer["updated"] == 1 and answer["fields"]["status"] == "stopped"
    answer = api.call("tasks.close", {"task": task})
    assert answer["updated"] == 1 and answer["fields"]["status"] == "closed"
    answer = api.call("tasks.publish", {"task": task})
    assert answer["updated"] == 1 and answer["fields"]["status"] == "published"
    assert answer["committed_versions_results"] == []

    listed = api.call("tasks.get_all", {"id": [task], "only_fields": ["id", "status_history"]})["tasks"][0]
    assert set(listed) == {"id", "status_history"}
    history = listed["status_history"]
    assert history == task_of(api, task)["status_history"]
    assert [(h["previous"], h["status"]) for h in history] == [
        (None, "created"), ("created", "queued"), ("queued", "created"), ("created", "queued"),
        ("queued", "in_progress"), ("in_progress", "failed"), ("failed", "created"), ("created", "queued"),
        ("queued", "stopped"), ("stopped", "closed"), ("closed", "published")]
    assert history[1]["reason"] == "try it" and history[2]["reason"] == ""
    assert history[4]["worker"] == "box:0" and history[5]["worker"] == "box:0"
    assert history[5]["reason"] == "boom" and history[5]["message"] == "Changed by conveyor box:0"
    assert history[8]["reason"] == "stopped by user" and history[8]["worker"] is None
    assert all(h["user"] == user for h in history)
    times = [h["time"] for h in history]
    assert times == sorted(times) and all(t.endswith("+00:00") for t in times)
    shown = conveyor(edit_server, "task", "show", task).stdout.splitlines()
    timeline = shown[[i for i, line in enumerate(shown) if line.startswith("History:")][0]:]
    assert len(timeline) == 11 and timeline[0].startswith("History:      (1 earlier changes")
    assert timeline[5].split(maxsplit=2)[2] == "failed      on box:0  boom", timeline
    assert timeline[-1].split(maxsplit=2)[2] == "published", timeline

    completed = draft(api)
    api.call("tasks.started", {"task": completed})
    assert api.call("tasks.completed", {"task": completed})["published"] == 0
    other = draft(api)
    api.call("tasks.started", {"task": other})
    answer = api.call("tasks.completed", {"task": other, "publish": True})
    assert answer["published"] == 1 and answer["fields"]["status"] == "published"


# --- the command line ---------------------------------------------------------------------------------------------
def test_cli_edits_a_draft_and_prints_what_changed(edit_server: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    task = conveyor(edit_server, "task", "create", "--name", "cli-edit", "--repo", REPO_URL, "--branch", "main",
                    "--script", "train.py", "--args", "lr=0.1", "batch=32", "--packages", "six==1.16.0"
                    ).stdout.strip()
    api.call("tasks.edit_hyper_params", {"task": task, "hyperparams": [
        {"section": "Extra", "name": "k", "value": "v"}]})
    (tmp_path / "setup.sh").write_text("export CUDA_HOME=/opt/cuda\n")
    (tmp_path / "reqs.txt").write_text("# pinned\nidna==3.7\nattrs==23.2.0\n")
    out = conveyor(edit_server, "task", "edit", task, "--args", "lr=0.01", "--param", "General/epochs=5",
                   "--delete-param", "Args/batch", "Extra", "--requirements", str(tmp_path / "reqs.txt"),
                   "--docker", "python:3.11-slim", "--docker-args=--ipc=host", "--setup-script",
                   str(tmp_path / "setup.sh"), "--commit", "b" * 40, "--script", "-m pkg.train", "--cwd", "src",
                   "--name", "cli-edited", "--comment", "smaller lr").stdout
    assert out.splitlines()[0] == f"Edited {task} (cli-edited)"
    for line in ("name: cli-edit → cli-edited", "comment: (none) → smaller lr", f"commit: (none) → {'b' * 40}",
                 "entry point: train.py → -m pkg.train", "working dir: . → src",
                 "requirements: six==1.16.0 → idna==3.7, attrs==23.2.0", "container image: (none) → python:3.11-slim",
                 "container arguments: (none) → --ipc=host",
                 "container setup script: (none) → export CUDA_HOME=/opt/cuda",
                 "Args/lr: 0.1 → 0.01", "Args/batch: 32 → (deleted)", "Extra/k: v → (deleted)",
                 "General/epochs: (none) → 5"):
        assert f"  {line}\n" in out, f"{line!r} not in\n{out}"
    doc = task_of(api, task)
    assert doc["hyperparams"]["Args"]["lr"]["value"] == "0.01" and "batch" not in doc["hyperparams"]["Args"]
    assert "Extra" not in doc["hyperparams"] and doc["hyperparams"]["General"]["epochs"]["value"] == "5"
    assert doc["script"]["requirements"] == {"pip": "# pinned\nidna==3.7\nattrs==23.2.0\n"}
    assert doc["container"] == {"image": "python:3.11-slim", "arguments": "--ipc=host",
                                "setup_shell_script": "export CUDA_HOME=/opt/cuda\n"}
    assert doc["script"]["working_dir"] == "src" and doc["script"]["branch"] == "main"

    # a new branch leaves the pinned commit behind, and says so; a new repository drops the diff
    moved = conveyor(edit_server, "task", "edit", task, "--branch", "dev", "--repo",
                     "https://user:hunter2@git.example.test/team/other.git")
    assert f"commit: {'b' * 40} → (none)" in moved.stdout and "branch: main → dev" in moved.stdout
    assert "the recorded commit bbbbbbbbbbbb is dropped" in moved.stderr
    assert "hunter2" not in moved.stdout + moved.stderr
    assert task_of(api, task)["script"]["repository"] == "https://git.example.test/team/other.git"


def test_cli_refuses_what_it_cannot_edit_with_the_way_out(edit_server: ServerProcess, api: ApiClient) -> None:
    task = draft(api)
    api.call("tasks.enqueue", {"task": task, "queue": a_queue(api)})
    err = conveyor(edit_server, "task", "edit", task, "--args", "lr=1", expect=2).stderr
    assert f"Task {task} is queued: only a draft (created) task can be edited" in err
    assert f"`conveyor task clone {task}`" in err
    clone = conveyor(edit_server, "task", "clone", task).stdout.strip()
    conveyor(edit_server, "task", "edit", clone, "--args", "lr=1")
    assert task_of(api, clone)["hyperparams"]["Args"]["lr"]["value"] == "1"

    fresh = draft(api)
    # (the forms of --param/--args/--delete-param: tests/unit/test_task_edits.py)
    for args, says in ((["--param", "epochs"], "is not Section/name=value"),
                       (["--requirements", "/nonexistent/reqs.txt"], "no such file"),
                       (["--repo", "../somewhere"], "is not a git URL"),
                       (["--cwd", "../up"], "leads out of the repository"),
                       ([], "Nothing to change")):
        err = conveyor(edit_server, "task", "edit", fresh, *args, expect=2).stderr
        assert says in err, (args, err)
    conveyor(edit_server, "task", "edit", "f" * 32, "--args", "lr=1", expect=2)
    assert task_of(api, fresh)["hyperparams"]["Args"]["lr"]["value"] == "0.1"
    as_json = json.loads(conveyor(edit_server, "task", "edit", fresh, "--param", "General/x=1", "--json").stdout)
    assert as_json["task"]["hyperparams"]["General"]["x"]["value"] == "1"
    assert as_json["answers"]["edit_hyper_params"] == {"updated": 1}


def test_cli_edit_keeps_the_type_and_description_of_a_parameter_it_changes(edit_server: ServerProcess,
                                                                             api: ApiClient) -> None:
    """The SDK records a parameter's type (get_parameters(cast=True) casts by it) and its help text: changing the
    value from the command line changes the value only."""
    task = draft(api)
    api.call("tasks.edit_hyper_params", {"task": task, "hyperparams": [
        {"section": "Args", "name": "lr", "value": "0.1", "type": "float", "description": "learning rate"},
        {"section": "General", "name": "epochs", "value": "3", "type": "int", "description": "passes"}]})
    conveyor(edit_server, "task", "edit", task, "--args", "lr=0.01", "--param", "General/epochs=5",
             "General/new=x")
    params = task_of(api, task)["hyperparams"]
    assert params["Args"]["lr"] == {"section": "Args", "name": "lr", "value": "0.01", "type": "float",
                                    "description": "learning rate"}
    assert params["General"]["epochs"] == {"section": "General", "name": "epochs", "value": "5", "type": "int",
                                           "description": "passes"}
    assert params["General"]["new"]["value"] == "x" and params["General"]["new"]["type"] == ""


def test_cli_edit_never_prints_the_credentials_of_the_recorded_repository(edit_server: ServerProcess,
                                                                            api: ApiClient) -> None:
    """Another client may have stored a repository URL with user:token@ in it: `task edit`'s report of what
    changed and its --json answers show it without them, as `task show` does."""
    task = draft(api, script={"repository": "https://bob:s3cr3t-token@git.example.test/team/models.git",
                              "branch": "main", "entry_point": "train.py"})
    moved = conveyor(edit_server, "task", "edit", task, "--repo", "https://git.example.test/team/other.git")
    assert "s3cr3t-token" not in moved.stdout + moved.stderr
    assert "repository: https://git.example.test/team/models.git → https://git.example.test/team/other.git" \
        in moved.stdout
    other = draft(api, script={"repository": "https://bob:s3cr3t-token@git.example.test/team/models.git",
                               "branch": "main", "entry_point": "train.py"})
    as_json = conveyor(edit_server, "task", "edit", other, "--branch", "dev", "--json").stdout
    assert "s3cr3t-token" not in as_json
    assert json.loads(as_json)["answers"]["edit"]["fields"]["script"]["repository"] == \
        "https://git.example.test/team/models.git"


# --- edits reach the run (a real agent daemon) --------------------------------------------------------------------
SDK_TRAIN = """\
import argparse, importlib.metadata as md, json
from clearml import Task

task = Task.init(project_name="edits", task_name="train", auto_connect_frameworks=False,
                 auto_resource_monitoring=False)
config = task.connect({"epochs": 1, "tag": "first"})
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--layers", type=int, nargs="+", default=[1])
args = p.parse_args()
print("ARGS " + json.dumps(vars(args), sort_keys=True))
print("GENERAL " + json.dumps(config, sort_keys=True))
"""
PACKAGES = """\
import importlib.metadata as md
for name in ("six", "idna", "attrs"):
    try:
        print("HAVE", name, md.version(name))
    except md.PackageNotFoundError:
        print("LACK", name)
"""


def printed(text: str, prefix: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith(prefix + " ")]
    assert lines, f"the script printed no {prefix} line:\n{text[-4000:]}"
    return json.loads(lines[-1][len(prefix) + 1:])


def clearml_requirement() -> str:
    """The SDK the tests run with: the task installs the same (its wheel is in the shared uv cache after one run)."""
    from importlib.metadata import version

    return f"clearml=={version('clearml')}\n"


def run_edited(server: ServerProcess, tmp_path: Path, files: dict[str, str], create: list[str], edit: list[str],
               *daemon_args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """A task recorded with `conveyor task create` from a local repository, edited with `conveyor task edit`, then
    run by a real daemon; returns the final task and its log."""
    work, _ = make_repo(tmp_path / "repos", files)
    task = conveyor(server, "task", "create", "--name", "edited-run", "--repo", ".", "--script", "train.py",
                    *create, cwd=work).stdout.strip()
    conveyor(server, "task", "edit", task, *edit)
    client = server.client()
    daemon = DaemonProcess(server, tmp_path / "agent", "--queue", "default", *daemon_args, env=env)
    try:
        conveyor(server, "task", "enqueue", task, "--queue", "default")
        doc = wait_final(client, task, timeout=300)
    finally:
        daemon.stop()
    text = log_text(client, task)
    assert doc["status"] == "completed", f"{doc.get('status_reason')}\n{text[-4000:]}\n{daemon.output()[-3000:]}"
    return doc, text


def test_edited_args_reach_an_argparse_script_through_the_sdk(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    doc, text = run_edited(sqlite_server, tmp_path, {"train.py": SDK_TRAIN, "requirements.txt": clearml_requirement()},
                           [], ["--args", "lr=0.01", "layers=[4, 5]"])
    assert printed(text, "ARGS") == {"lr": 0.01, "layers": [4, 5]}
    assert doc["hyperparams"]["Args"]["lr"]["value"] == "0.01"


def test_an_edited_general_value_reaches_task_connect(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    _, text = run_edited(sqlite_server, tmp_path, {"train.py": SDK_TRAIN, "requirements.txt": clearml_requirement()},
                         [], ["--param", "General/epochs=7"])
    assert printed(text, "GENERAL") == {"epochs": 7, "tag": "first"}
    assert printed(text, "ARGS") == {"lr": 0.1, "layers": [1]}


def test_edited_packages_are_what_gets_installed(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    doc, text = run_edited(sqlite_server, tmp_path, {"train.py": PACKAGES}, ["--packages", "six==1.16.0"],
                           ["--packages", "idna==3.7", "attrs==23.2.0"])
    assert "HAVE idna 3.7" in text and "HAVE attrs 23.2.0" in text and "LACK six" in text
    assert doc["script"]["requirements"]["org_pip"] == "idna==3.7\nattrs==23.2.0\n"
    # the run's timeline, with the worker that ran it
    history = doc["status_history"]
    assert [h["status"] for h in history] == ["created", "queued", "in_progress", "completed"], history
    assert history[2]["worker"] and history[3]["worker"] == history[2]["worker"], history
    assert f"Changed by conveyor {history[2]['worker']}" in history[3]["message"]


IMAGE_MARK = """\
import os
print("IMAGE", os.environ.get("CLEARML_DOCKER_IMAGE"), "MARK", os.environ.get("CONVEYOR_TEST_MARK"))
"""


@pytest.fixture
def marked_image() -> Iterator[str]:
    """The local base image with one variable of its own: the log proves which image ran."""
    from containerkit import BASE_IMAGE, ready_engine

    engine = ready_engine("docker")
    image = f"conveyor-test/edited:{secrets.token_hex(3)}"
    name = f"conveyor-test-edited-{secrets.token_hex(3)}"
    subprocess.run([engine, "run", "--name", name, "--network", "none", BASE_IMAGE, "true"], check=True,
                   capture_output=True)
    try:
        subprocess.run([engine, "commit", "--change", "ENV CONVEYOR_TEST_MARK=edited-image", name, image],
                       check=True, capture_output=True)
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True)
    yield image
    subprocess.run([engine, "rmi", "-f", image], capture_output=True)


def test_an_edited_image_is_the_image_it_runs_in(sqlite_server: ServerProcess, tmp_path: Path,
                                                 marked_image: str) -> None:
    from containerkit import BASE_IMAGE, IMAGE_ENVS

    env = agent_env(sqlite_server, tmp_path / "agent", **{
        "CLEARML_AGENT__AGENT__EXTRA_DOCKER_ARGUMENTS": json.dumps(["-v", f"{tmp_path}:{tmp_path}"]),
        "CLEARML_AGENT__AGENT__DOCKER_CONVEYOR_ENV_DIR": IMAGE_ENVS,
        "CLEARML_WORKER_ID": f"test-{secrets.token_hex(4)}"})
    _, text = run_edited(sqlite_server, tmp_path, {"train.py": IMAGE_MARK}, ["--docker", BASE_IMAGE],
                         ["--docker", marked_image], "--docker", "--cpu-only", env=env)
    assert f"IMAGE {marked_image} MARK edited-image" in text
