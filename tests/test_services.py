"""Every service's calls with the reference server's semantics, on SQLite and on PostgreSQL (a server per database)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _api import module_server
from conftest import ServerProcess
from conveyor.client import ApiCallError, ApiClient

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(request.param, tmp_path_factory.mktemp(f"services-{request.param}")) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[ApiClient]:
    with srv.client() as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused(fn: Callable[..., Any], *args: Any, **kw: Any) -> ApiCallError:
    with pytest.raises(ApiCallError) as info:
        fn(*args, **kw)
    return info.value


def task_of(api: ApiClient, tid: str) -> dict[str, Any]:
    return api.call("tasks.get_by_id", {"task": tid})["task"]


def entries(api: ApiClient, qid: str) -> list[str]:
    return [e["task"] for e in api.call("queues.get_by_id", {"queue": qid})["queue"]["entries"]]


def new_queue(api: ApiClient, prefix: str = "q") -> str:
    return api.call("queues.create", {"name": unique(prefix)})["id"]


def new_task(api: ApiClient, **fields: Any) -> str:
    body = {"name": unique("task"), "type": "training",
            "script": {"repository": "file:///tmp/repo", "branch": "main", "entry_point": "train.py",
                       "working_dir": "."}, **fields}
    return api.call("tasks.create", body)["id"]


def running_task(api: ApiClient, **fields: Any) -> str:
    """A task pulled from a queue and started, as the agent does it."""
    qid = new_queue(api, "run")
    tid = new_task(api, **fields)
    api.call("tasks.enqueue", {"task": tid, "queue": qid})
    assert api.call("queues.get_next_task", {"queue": qid})["entry"]["task"] == tid
    api.call("tasks.started", {"task": tid, "force": True, "status_message": "pulled by agent"})
    return tid


# --- users, debug ----------------------------------------------------------------------------------------------------
def test_get_current_user(api: ApiClient) -> None:
    user = api.call("users.get_current_user")["user"]
    assert user["id"] == api.claims["identity"]["user"]
    assert user["name"] and user["company"]["id"] == api.claims["identity"]["company"]


def test_debug_ping_advertises_long_poll(api: ApiClient) -> None:
    data = api.call("debug.ping")
    assert "long_poll" in data["conveyor"]["features"]
    assert data["conveyor"]["long_poll_max_sec"] > 0


# --- projects --------------------------------------------------------------------------------------------------------
def test_projects(api: ApiClient) -> None:
    name = unique("Proj")
    pid = api.call("projects.create", {"name": name, "description": "about it"})["id"]
    assert HEX32.match(pid)
    project = api.call("projects.get_by_id", {"project": pid})["project"]
    assert (project["id"], project["name"], project["description"]) == (pid, name, "about it")
    other = api.call("projects.create", {"name": f"{name}-sub"})["id"]
    # The SDK's anchored regex (§6.1), case-insensitive: exactly one; unanchored finds both.
    found = api.call("projects.get_all", {"name": f"^{re.escape(name.lower())}$", "only_fields": ["id"],
                                          "shallow_search": False, "search_hidden": True})["projects"]
    assert found == [{"id": pid}]
    assert {p["id"] for p in api.call("projects.get_all", {"name": re.escape(name)})["projects"]} == {pid, other}
    assert api.call("projects.get_all", {"name": "^no-such-project-xyz$"})["projects"] == []
    assert {pid, other} <= {p["id"] for p in api.call("projects.get_all", {"id": [pid, other]})["projects"]}
    err = refused(api.call, "projects.create", {"name": name.upper()})
    assert (err.code, err.subcode) == (400, 402) and name.upper() in err.msg
    assert refused(api.call, "projects.get_by_id", {"project": "0" * 32}).subcode == 401


# --- tasks: create, read, query --------------------------------------------------------------------------------------
FULL = {
    "type": "training",
    "comment": "made by the test",
    "tags": ["red", "big"],
    "system_tags": ["development"],
    "script": {"binary": "python3.11", "repository": "file:///tmp/repo", "branch": "main", "version_num": "",
               "entry_point": "train.py", "working_dir": ".", "diff": "--- a\n+++ b\n",
               "requirements": {"pip": "numpy==1.26\n", "conda": ""}},
    "execution": {"parameters": {"Args/lr": "0.1"}, "model_labels": {}, "artifacts": []},
    "hyperparams": {"Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1", "type": "float",
                                    "description": ""}}},
    "configuration": {"cfg": {"name": "cfg", "value": "a: 1", "type": "yaml", "description": ""}},
    "container": {"image": "python:3.11", "arguments": "--ipc=host", "setup_shell_script": ""},
    "runtime": {"_abort_poll_freq": 5, "progress": "0"},
    "models": {"input": [], "output": []},
}


def test_task_create_full_and_get_by_id(api: ApiClient) -> None:
    pid = api.call("projects.create", {"name": unique("p")})["id"]
    name = unique("full")
    tid = api.call("tasks.create", {"name": name, "project": pid, **FULL})["id"]
    assert HEX32.match(tid)
    task = task_of(api, tid)
    assert task["id"] == tid and task["name"] == name and task["project"] == pid
    assert task["status"] == "created"
    assert task["user"] == api.claims["identity"]["user"]
    for key, value in FULL.items():
        assert task[key] == value, key
    assert task["created"] and task["last_update"]
    assert task["last_iteration"] == 0


def test_tasks_get_all_filters(api: ApiClient) -> None:
    pid = api.call("projects.create", {"name": unique("filters")})["id"]
    a1 = new_task(api, name="Alpha-1", project=pid, tags=["t1", "common"])
    a2 = new_task(api, name="alpha-2", project=pid, tags=["t2", "common"])
    b = new_task(api, name="beta", project=pid, tags=["t1"])
    hidden = new_task(api, name="alpha-hidden", project=pid, system_tags=["hidden"])
    api.call("tasks.started", {"task": a2})

    def ids(**body: Any) -> set[str]:
        return {t["id"] for t in api.call("tasks.get_all", {"project": [pid], **body})["tasks"]}

    assert ids() == {a1, a2, b}
    assert ids(search_hidden=True) == {a1, a2, b, hidden}
    assert ids(name="^alpha") == {a1, a2}  # case-insensitive
    assert ids(name="^alpha-1$") == {a1}
    assert ids(status=["in_progress"]) == {a2}
    assert ids(status=["created", "in_progress"]) == {a1, a2, b}
    assert ids(tags=["t1"]) == {a1, b}
    assert ids(tags=["t1", "t2"]) == {a1, a2, b}
    assert ids(tags=["-t1"]) == {a2}
    assert ids(tags=["common", "-t2"]) == {a1}
    assert ids(tags=["__$all", "t1", "common"]) == {a1}
    assert ids(id=[a1, b]) == {a1, b}
    # Asked by id, a hidden task is found (the agent's stop check relies on it).
    assert {t["id"] for t in api.call("tasks.get_all", {"id": [hidden]})["tasks"]} == {hidden}
    assert api.call("tasks.get_all", {"project": [pid], "name": "^nothing-here$"})["tasks"] == []


def test_tags_match_exactly(api: ApiClient) -> None:
    """Tags are matched whole and case-sensitively; `_` and `%` in a tag are no wildcards."""
    pid = api.call("projects.create", {"name": unique("tags")})["id"]
    under = new_task(api, project=pid, tags=["force_workers:off"])
    other = new_task(api, project=pid, tags=["forceXworkers:off"])
    upper = new_task(api, project=pid, tags=["Red"])
    percent = new_task(api, project=pid, tags=["100%"])
    part = new_task(api, project=pid, tags=["reddish"])

    def ids(*tags: str) -> set[str]:
        return {t["id"] for t in api.call("tasks.get_all", {"project": [pid], "tags": list(tags)})["tasks"]}

    assert ids("force_workers:off") == {under}
    assert ids("Red") == {upper}
    assert ids("red") == set()
    assert ids("100%") == {percent}
    assert ids("10%") == set()
    assert ids("-Red") == {under, other, percent, part}
    qid = api.call("queues.create", {"name": unique("tq"), "tags": ["force_workers:on"]})["id"]
    api.call("queues.create", {"name": unique("tq"), "tags": ["forceXworkers:on"]})
    assert [q["id"] for q in api.call("queues.get_all", {"tags": ["force_workers:on"]})["queues"]] == [qid]
    # A user tag "Hidden" does not hide a task; only the system tag "hidden" does.
    shown = new_task(api, project=pid, tags=["Hidden"], system_tags=["Hidden"])
    assert shown in {t["id"] for t in api.call("tasks.get_all", {"project": [pid]})["tasks"]}


def test_tasks_get_all_only_fields_nested(api: ApiClient) -> None:
    tid = api.call("tasks.create", {"name": unique("of"), **FULL})["id"]
    got = api.call("tasks.get_all", {"id": [tid], "only_fields": ["script.requirements", "runtime._abort_poll_freq"],
                                     "search_hidden": True})["tasks"]
    assert got == [{"id": tid, "script": {"requirements": FULL["script"]["requirements"]},
                    "runtime": {"_abort_poll_freq": 5}}]
    got = api.call("tasks.get_all", {"id": [tid], "only_fields": ["status", "status_message"]})["tasks"]
    assert got == [{"id": tid, "status": "created", "status_message": ""}]
    # A path that is not there is simply left out (an empty parent, as MongoDB projects it, is fine too).
    assert api.call("tasks.get_all", {"id": [tid], "only_fields": ["runtime._abort_callback_timeout"]})["tasks"] in (
        [{"id": tid}], [{"id": tid, "runtime": {}}])
    assert api.call("tasks.get_all", {"id": [tid], "only_fields": ["output.model.uri"]})["tasks"] in (
        [{"id": tid}], [{"id": tid, "output": {}}])
    # `-path` drops a path from the whole document.
    full = api.call("tasks.get_all", {"id": [tid], "only_fields": ["-script.diff"]})["tasks"][0]
    assert "diff" not in full["script"] and full["script"]["entry_point"] == "train.py"


def test_tasks_get_all_order_and_paging(api: ApiClient) -> None:
    pid = api.call("projects.create", {"name": unique("paging")})["id"]
    names = [f"n{i:02d}" for i in range(7)]
    ids = {new_task(api, name=n, project=pid): n for n in reversed(names)}
    assert len(ids) == 7

    def page(**body: Any) -> list[str]:
        return [t["name"] for t in api.call("tasks.get_all", {"project": [pid], "only_fields": ["name"],
                                                              **body})["tasks"]]

    assert page(order_by=["name"]) == names
    assert page(order_by=["-name"]) == names[::-1]
    # Default order: newest first (created in reverse name order, so names ascending).
    assert page() == names
    pages = [page(order_by=["name"], page=n, page_size=3) for n in range(4)]
    assert pages == [names[0:3], names[3:6], names[6:7], []]
    assert page(order_by=["-created"], page_size=2) == names[:2]


# --- tasks: edit, clone ----------------------------------------------------------------------------------------------
def test_edit(api: ApiClient) -> None:
    tid = api.call("tasks.create", {"name": unique("edit"), **FULL})["id"]
    answer = api.call("tasks.edit", {"task": tid, "name": "renamed", "comment": "new comment"})
    assert answer["updated"] == 1 and answer["fields"]["name"] == "renamed"
    # A partial script edit (the agent's version_num write-back) keeps every other script key.
    api.call("tasks.edit", {"task": tid, "script": {"version_num": "abc123"}})
    task = task_of(api, tid)
    assert task["name"] == "renamed" and task["comment"] == "new comment"
    assert task["script"] == {**FULL["script"], "version_num": "abc123"}
    # The SDK's hyperparams dict replaces the section map.
    hp = {"General": {"lr": {"section": "General", "name": "lr", "value": "0.2", "type": "float", "description": ""}}}
    api.call("tasks.edit", {"task": tid, "hyperparams": hp})
    assert task_of(api, tid)["hyperparams"] == hp
    # Only created tasks can be edited without force.
    api.call("tasks.started", {"task": tid})
    err = refused(api.call, "tasks.edit", {"task": tid, "name": "again"})
    assert (err.code, err.subcode) == (400, 110)
    assert task_of(api, tid)["name"] == "renamed"
    api.call("tasks.edit", {"task": tid, "force": True, "runtime": {"_exec_agent_hostname": "host"}})
    assert task_of(api, tid)["runtime"] == {"_exec_agent_hostname": "host"}
    assert refused(api.call, "tasks.edit", {"task": tid, "force": True, "type": "bogus"}).code == 400


def test_clone(api: ApiClient) -> None:
    qid = new_queue(api)
    src = api.call("tasks.create", {"name": unique("src"), **FULL})["id"]
    api.call("tasks.enqueue", {"task": src, "queue": qid})
    clone_id = api.call("tasks.clone", {"task": src, "new_task_name": "the clone"})["id"]
    assert HEX32.match(clone_id) and clone_id != src
    clone = task_of(api, clone_id)
    assert clone["name"] == "the clone" and clone["status"] == "created" and clone["parent"] == src
    for key in ("script", "hyperparams", "configuration", "container", "tags"):
        assert clone[key] == FULL[key], key
    assert "queue" not in clone["execution"]
    assert "development" not in clone["system_tags"]
    assert entries(api, qid) == [src]  # the source stays queued, the clone is not


# --- tasks: queueing and status --------------------------------------------------------------------------------------
def test_enqueue_and_dequeue(api: ApiClient) -> None:
    qid = new_queue(api)
    tid = new_task(api, system_tags=["development", "keep-me"])
    answer = api.call("tasks.enqueue", {"task": tid, "queue": qid, "verify_watched_queue": False})
    assert answer["updated"] == 1 and answer["queued"] == 1
    task = task_of(api, tid)
    assert task["status"] == "queued"
    assert task["execution"]["queue"] == qid
    assert task["system_tags"] == ["keep-me"]  # development dropped, the rest kept
    assert entries(api, qid) == [tid]
    assert refused(api.call, "tasks.enqueue", {"task": tid, "queue": qid}).subcode == 110
    assert entries(api, qid) == [tid]
    answer = api.call("tasks.dequeue", {"task": tid})
    assert answer["updated"] == 1
    assert task_of(api, tid)["status"] == "created"
    assert entries(api, qid) == []
    assert api.call("tasks.dequeue", {"task": tid})["updated"] == 0
    # By queue name, and with no queue at all: the default queue.
    queue_name = api.call("queues.get_by_id", {"queue": qid})["queue"]["name"]
    api.call("tasks.enqueue", {"task": tid, "queue_name": queue_name})
    assert entries(api, qid) == [tid]
    api.call("tasks.dequeue", {"task": tid})
    default = api.call("queues.get_default")["id"]
    api.call("tasks.enqueue", {"task": tid})
    assert task_of(api, tid)["execution"]["queue"] == default and tid in entries(api, default)
    api.call("tasks.dequeue", {"task": tid})
    assert tid not in entries(api, default)


def test_agent_sequence_never_fails(api: ApiClient) -> None:
    """§3.4-3.5 and §8: five tasks.started with force, a dequeue in between, then the SDK's own started."""
    qid = new_queue(api)
    tid = new_task(api)
    api.call("tasks.enqueue", {"task": tid, "queue": qid})
    assert api.call("queues.get_next_task", {"queue": qid})["entry"]["task"] == tid
    assert task_of(api, tid)["status"] == "queued"  # the pop leaves the status to the agent
    first = api.call("tasks.started", {"task": tid, "force": True, "status_message": "pulled by agent"})
    assert first["updated"] == 1 and first["started"] == 1 and first["fields"]["status"] == "in_progress"
    started_at = task_of(api, tid)["started"]
    api.call("tasks.get_all", {"id": [tid], "only_fields": ["runtime"], "search_hidden": True})
    api.call("tasks.edit", {"task": tid, "force": True, "runtime": {"_exec_agent_hostname": "h"}})
    api.call("tasks.started", {"force": True, "task": tid, "status_message": "launch by agent"})
    assert api.call("tasks.dequeue", {"task": tid, "new_status": "in_progress"})["updated"] >= 0
    api.call("tasks.started", {"force": True, "task": tid, "status_reason": "starting execution soon",
                               "status_message": ""})
    api.call("tasks.started", {"force": True, "task": tid, "status_reason": "worker started execution",
                               "status_message": "Changed by clearml-agent h:0"})
    api.call("tasks.started", {"force": True, "task": tid, "status_reason": "worker starting task execution",
                               "status_message": "Changed by clearml-agent h:0"})
    api.call("tasks.started", {"force": False, "task": tid})  # the SDK inside the task
    task = task_of(api, tid)
    assert task["status"] == "in_progress" and task["started"] == started_at
    assert task["status_reason"] == "worker starting task execution"
    done = api.call("tasks.completed", {"force": False, "task": tid, "status_reason": "worker execution done",
                                        "status_message": "Changed by clearml-agent h:0"})
    assert done["updated"] == 1
    task = task_of(api, tid)
    assert task["status"] == "completed" and task["completed"] and task["status_reason"] == "worker execution done"


def test_status_machine(api: ApiClient) -> None:
    tid = new_task(api)
    for endpoint in ("tasks.completed", "tasks.failed"):
        err = refused(api.call, endpoint, {"task": tid})
        assert (err.code, err.subcode) == (400, 110) and "force" in err.msg
        assert task_of(api, tid)["status"] == "created"
    api.call("tasks.completed", {"task": tid, "force": True})
    assert task_of(api, tid)["status"] == "completed"

    failing = running_task(api)
    api.call("tasks.failed", {"task": failing, "status_reason": "worker execution exit code 3"})
    task = task_of(api, failing)
    assert task["status"] == "failed" and task["status_reason"] == "worker execution exit code 3"
    stopping = running_task(api)
    api.call("tasks.stopped", {"task": stopping, "status_reason": "user abort"})
    assert task_of(api, stopping)["status"] == "stopped"
    # Same-status changes are allowed.
    api.call("tasks.stopped", {"task": stopping})
    # A published task cannot be started without force.
    published = running_task(api)
    api.call("tasks.completed", {"task": published, "publish": True})
    assert task_of(api, published)["status"] == "published"
    assert refused(api.call, "tasks.started", {"task": published}).subcode == 110


def test_stop_running_task_of_live_worker(api: ApiClient) -> None:
    tid = running_task(api)
    worker = unique("host") + ":0"
    api.call("workers.register", {"worker": worker, "queues": [], "timeout": 600})
    api.call("workers.status_report", {"worker": worker, "task": tid, "timestamp": int(time.time() * 1000),
                                       "machine_stats": None, "is_daemon": True})
    answer = api.call("tasks.stop", {"task": tid})
    assert answer["updated"] == 1
    task = task_of(api, tid)
    assert task["status"] == "in_progress" and task["status_message"] == "stopping"
    # The agent's stop check sees it, kills the process and reports.
    check = api.call("tasks.get_all", {"id": [tid], "search_hidden": True, "only_fields": ["status", "status_message"]})
    assert check["tasks"] == [{"id": tid, "status": "in_progress", "status_message": "stopping"}]
    api.call("tasks.stopped", {"task": tid, "status_reason": "task was stopped by tasks.stop"})
    assert task_of(api, tid)["status"] == "stopped"
    api.call("workers.unregister", {"worker": worker, "queues": []})


def test_stop_without_worker_stops_at_once(api: ApiClient) -> None:
    qid = new_queue(api)
    queued = new_task(api)
    api.call("tasks.enqueue", {"task": queued, "queue": qid})
    assert api.call("tasks.stop", {"task": queued})["updated"] == 1
    assert task_of(api, queued)["status"] == "stopped"
    assert entries(api, qid) == []
    assert api.call("queues.get_next_task", {"queue": qid}) == {}
    # A running development task (Task.init run locally) stops at once too.
    dev = new_task(api, system_tags=["development"])
    api.call("tasks.started", {"task": dev})
    api.call("tasks.stop", {"task": dev})
    assert task_of(api, dev)["status"] == "stopped"
    # So does a running task with no worker heard from.
    orphan = running_task(api)
    api.call("tasks.stop", {"task": orphan})
    assert task_of(api, orphan)["status"] == "stopped"


def test_reset(api: ApiClient) -> None:
    tid = running_task(api)
    api.call_lines("events.add_batch", [
        {"type": "log", "task": tid, "msg": "hello\n", "timestamp": 1},
        {"type": "training_stats_scalar", "task": tid, "iter": 7, "metric": "loss", "variant": "train", "value": 1.0,
         "timestamp": 2}])
    task = task_of(api, tid)
    assert task["last_iteration"] == 7 and task["last_metrics"]
    api.call("tasks.failed", {"task": tid})
    qid = new_queue(api)
    api.call("tasks.enqueue", {"task": tid, "queue": qid})
    assert entries(api, qid) == [tid]
    answer = api.call("tasks.reset", {"task": tid, "force": False, "clear_all": False,
                                      "delete_external_artifacts": True})
    assert answer["updated"] == 1
    task = task_of(api, tid)
    assert task["status"] == "created"
    assert task["last_iteration"] == 0 and task["last_metrics"] == {}
    assert "queue" not in task["execution"] and "started" not in task
    assert entries(api, qid) == []
    assert api.call("events.get_task_log", {"task": tid})["events"] == []
    assert task["script"]["entry_point"] == "train.py"  # the definition is kept


def test_delete(api: ApiClient) -> None:
    qid = new_queue(api)
    tid = new_task(api)
    api.call("tasks.enqueue", {"task": tid, "queue": qid})
    assert api.call("tasks.delete", {"task": tid})["deleted"] is True
    assert refused(api.call, "tasks.get_by_id", {"task": tid}).subcode == 101
    assert entries(api, qid) == []
    running = running_task(api)
    assert refused(api.call, "tasks.delete", {"task": running}).subcode == 110
    api.call("tasks.delete", {"task": running, "force": True})
    assert api.call("tasks.get_all", {"id": [running]})["tasks"] == []


def test_ping(api: ApiClient) -> None:
    tid = running_task(api)
    before = task_of(api, tid)["last_update"]
    time.sleep(0.05)
    assert api.call("tasks.ping", {"task": tid}) == {}
    assert task_of(api, tid)["last_update"] > before
    assert refused(api.call, "tasks.ping", {"task": "0" * 32}).subcode == 101


def test_set_requirements(api: ApiClient) -> None:
    tid = api.call("tasks.create", {"name": unique("req"), **FULL})["id"]
    reqs = {"pip": ["numpy==1.26.4", "clearml==2.1.12"], "org_pip": "numpy\n"}
    assert api.call("tasks.set_requirements", {"task": tid, "requirements": reqs})["updated"] == 1
    got = api.call("tasks.get_all", {"id": [tid], "only_fields": ["script.requirements"]})["tasks"][0]
    assert got["script"]["requirements"] == reqs
    script = task_of(api, tid)["script"]
    assert script["entry_point"] == "train.py" and script["diff"] == FULL["script"]["diff"]
    api.call("tasks.set_requirements", {"task": tid, "requirements": {"pip": "torch\n", "conda": ""}})
    assert task_of(api, tid)["script"]["requirements"] == {"pip": "torch\n", "conda": ""}


def test_hyper_params(api: ApiClient) -> None:
    tid = new_task(api)
    api.call("tasks.edit_hyper_params", {"task": tid, "hyperparams": [
        {"section": "Args", "name": "lr", "value": 0.1, "type": "float"},
        {"section": "Args", "name": "epochs", "value": "7"},
        {"section": "Environment", "name": "FOO", "value": "bar"}]})
    params = api.call("tasks.get_hyper_params", {"tasks": [tid]})["params"]
    assert len(params) == 1 and params[0]["task"] == tid
    by_name = {(p["section"], p["name"]): p for p in params[0]["hyperparams"]}
    assert by_name[("Args", "lr")]["value"] == "0.1" and by_name[("Args", "lr")]["type"] == "float"
    assert by_name[("Args", "epochs")]["value"] == "7"
    assert by_name[("Environment", "FOO")]["value"] == "bar"
    assert task_of(api, tid)["hyperparams"]["Args"]["lr"]["value"] == "0.1"
    # replace_hyperparams "section" replaces only the sections named.
    api.call("tasks.edit_hyper_params", {"task": tid, "replace_hyperparams": "section",
                                         "hyperparams": [{"section": "Args", "name": "lr", "value": "0.5"}]})
    hp = task_of(api, tid)["hyperparams"]
    assert set(hp["Args"]) == {"lr"} and hp["Args"]["lr"]["value"] == "0.5" and "FOO" in hp["Environment"]
    api.call("tasks.started", {"task": tid})
    assert refused(api.call, "tasks.edit_hyper_params", {"task": tid, "hyperparams": [{"name": "x"}]}).subcode == 110


# --- queues ----------------------------------------------------------------------------------------------------------
def test_queue_create_get_update(api: ApiClient) -> None:
    name = unique("Queue")
    qid = api.call("queues.create", {"name": name, "tags": ["gpu"]})["id"]
    assert HEX32.match(qid)
    err = refused(api.call, "queues.create", {"name": name.lower()})
    assert (err.code, err.subcode) == (400, 704)
    queue = api.call("queues.get_by_id", {"queue": qid})["queue"]
    assert queue["name"] == name and queue["tags"] == ["gpu"] and queue["entries"] == []
    # The agent's lookup: an escaped, unanchored name; it keeps exact matches.
    found = api.call("queues.get_all", {"name": re.escape(name), "only_fields": ["name", "id"]})["queues"]
    assert found == [{"id": qid, "name": name}]
    tid = new_task(api)
    api.call("tasks.enqueue", {"task": tid, "queue": qid})
    listed = {q["id"]: q for q in api.call("queues.get_all", {"id": [qid]})["queues"]}
    assert [e["task"] for e in listed[qid]["entries"]] == [tid] and listed[qid]["entries"][0]["added"]
    assert api.call("queues.get_all", {"id": [qid], "only_fields": ["id", "tags"]})["queues"] == [
        {"id": qid, "tags": ["gpu"]}]
    api.call("queues.update", {"queue": qid, "name": f"{name}-new", "tags": ["gpu", "force_workers:off"]})
    queue = api.call("queues.get_by_id", {"queue": qid})["queue"]
    assert queue["name"] == f"{name}-new" and queue["tags"] == ["gpu", "force_workers:off"]
    other = new_queue(api)
    assert refused(api.call, "queues.update", {"queue": other, "name": f"{name}-NEW"}).subcode == 704


def test_default_queue(api: ApiClient) -> None:
    default = api.call("queues.get_default")
    assert default["name"] == "default" and HEX32.match(default["id"])
    queue = api.call("queues.get_by_id", {"queue": default["id"]})["queue"]
    assert "default" in queue["system_tags"]
    found = api.call("queues.get_all", {"name": "^default$", "only_fields": ["id"], "search_hidden": False})["queues"]
    assert found == [{"id": default["id"]}]


def test_get_next_task_pops_in_order(api: ApiClient) -> None:
    qid = new_queue(api)
    assert api.call("queues.get_next_task", {"queue": qid}) == {}
    tids = [new_task(api) for _ in range(3)]
    for tid in tids:
        api.call("tasks.enqueue", {"task": tid, "queue": qid})
    popped = []
    for _ in tids:
        entry = api.call("queues.get_next_task", {"queue": qid})["entry"]
        assert entry["added"]
        popped.append(entry["task"])
    assert popped == tids
    assert api.call("queues.get_next_task", {"queue": qid}) == {}
    assert all(task_of(api, t)["status"] == "queued" for t in tids)
    assert entries(api, qid) == []


def test_get_next_task_long_poll(api: ApiClient) -> None:
    qid = new_queue(api)
    tid = new_task(api)
    start = time.monotonic()
    assert api.call("queues.get_next_task", {"queue": qid, "wait": 0.5}) == {}
    assert 0.4 < time.monotonic() - start < 5
    timer = threading.Timer(0.5, lambda: api.call("tasks.enqueue", {"task": tid, "queue": qid}))
    timer.start()
    start = time.monotonic()
    entry = api.call("queues.get_next_task", {"queue": qid, "wait": 10})["entry"]
    elapsed = time.monotonic() - start
    timer.join()
    assert entry["task"] == tid
    assert 0.3 < elapsed < 5


def test_add_remove_clear(api: ApiClient) -> None:
    qid = new_queue(api)
    a, b, c = (new_task(api) for _ in range(3))
    assert api.call("queues.add_task", {"queue": qid, "task": a})["added"] == 1
    api.call("tasks.enqueue", {"task": b, "queue": qid})
    api.call("tasks.enqueue", {"task": c, "queue": qid})
    assert entries(api, qid) == [a, b, c]
    assert api.call("queues.remove_task", {"queue": qid, "task": b})["removed"] == 1
    assert entries(api, qid) == [a, c]
    assert task_of(api, b)["status"] == "created" and "queue" not in task_of(api, b)["execution"]
    assert api.call("queues.remove_task", {"queue": qid, "task": b})["removed"] == 0
    assert refused(api.call, "queues.add_task", {"queue": qid, "task": "0" * 32}).subcode == 101
    removed = api.call("queues.clear_queue", {"queue": qid})["removed_tasks"]
    assert sorted(removed) == sorted([a, c])
    assert entries(api, qid) == []
    assert task_of(api, c)["status"] == "created"


def test_move_tasks(api: ApiClient) -> None:
    qid = new_queue(api)
    a, b, c, d = (new_task(api) for _ in range(4))
    for tid in (a, b, c, d):
        api.call("tasks.enqueue", {"task": tid, "queue": qid})
    api.call("queues.move_task_to_front", {"queue": qid, "task": d})
    assert entries(api, qid) == [d, a, b, c]
    api.call("queues.move_task_to_back", {"queue": qid, "task": d})
    assert entries(api, qid) == [a, b, c, d]
    api.call("queues.move_task_forward", {"queue": qid, "task": c})
    assert entries(api, qid) == [a, c, b, d]
    api.call("queues.move_task_backward", {"queue": qid, "task": a, "count": 2})
    assert entries(api, qid) == [c, b, a, d]
    api.call("queues.move_task_forward", {"queue": qid, "task": b, "count": 10})
    assert entries(api, qid) == [b, c, a, d]
    # New entries still go to the back, and pops follow the new order.
    e = new_task(api)
    api.call("tasks.enqueue", {"task": e, "queue": qid})
    assert [api.call("queues.get_next_task", {"queue": qid})["entry"]["task"] for _ in range(5)] == [b, c, a, d, e]
    assert refused(api.call, "queues.move_task_to_front", {"queue": qid, "task": a}).code == 400


def test_queue_delete(api: ApiClient) -> None:
    qid = new_queue(api)
    tid = new_task(api)
    api.call("tasks.enqueue", {"task": tid, "queue": qid})
    err = refused(api.call, "queues.delete", {"queue": qid})
    assert (err.code, err.subcode) == (400, 702) and "force" in err.msg
    assert entries(api, qid) == [tid]
    assert api.call("queues.delete", {"queue": qid, "force": True})["deleted"] == 1
    assert refused(api.call, "queues.get_by_id", {"queue": qid}).subcode == 701
    assert task_of(api, tid)["status"] == "created"
    empty = new_queue(api)
    api.call("queues.delete", {"queue": empty})
    assert api.call("queues.get_all", {"id": [empty]})["queues"] == []


# --- workers ---------------------------------------------------------------------------------------------------------
def _worker_ids(api: ApiClient, **body: Any) -> set[str]:
    return {w["id"] for w in api.call("workers.get_all", body)["workers"]}


def test_register_report_get_all(api: ApiClient) -> None:
    qid = new_queue(api)
    worker = unique("host") + ":0"
    count = api.call("workers.get_count")["count"]
    assert api.call("workers.register", {"worker": worker, "queues": [qid], "timeout": 600}) == {}
    assert api.call("workers.get_count")["count"] == count + 1
    listed = {w["id"]: w for w in api.call("workers.get_all")["workers"]}
    assert [q["id"] for q in listed[worker]["queues"]] == [qid]
    assert listed[worker]["last_activity_time"]

    tid = running_task(api)
    before = task_of(api, tid)["last_update"]
    time.sleep(0.05)
    stats = {"cpu_usage": [10.0, 30.0], "memory_used": 500.0, "memory_free": 1500.0, "disk_free_home": 50.0}
    api.call("workers.status_report", {"worker": worker, "timestamp": int(time.time() * 1000), "machine_stats": stats,
                                       "is_daemon": True, "tags": None, "queues": [qid], "task": tid, "queue": qid})
    task = task_of(api, tid)
    assert task["last_worker"] == worker and task["last_update"] > before
    entry = {w["id"]: w for w in api.call("workers.get_all")["workers"]}[worker]
    assert entry["task"]["id"] == tid and entry["machine_stats"]["memory_used"] == 500.0
    assert entry["queue"]["id"] == qid
    assert worker in _worker_ids(api, last_seen=60)

    # get_stats and get_activity_report return what was reported.
    now = time.time()
    got = api.call("workers.get_stats", {"worker_ids": [worker], "from_date": now - 60, "to_date": now + 1,
                                         "interval": 3600, "items": [{"key": "cpu_usage", "category": "avg"},
                                                                     {"key": "memory_used", "category": "max"}]})
    metrics = {m["metric"]: m for m in got["workers"][0]["metrics"]}
    assert got["workers"][0]["worker"] == worker
    assert metrics["cpu_usage"]["stats"] == [{"aggregation": "avg", "values": [20.0]}]
    assert metrics["memory_used"]["stats"] == [{"aggregation": "max", "values": [500.0]}]
    report = api.call("workers.get_activity_report", {"from_date": now - 60, "to_date": now + 1, "interval": 3600})
    assert sum(report["total"]["counts"]) >= 1 and sum(report["active"]["counts"]) >= 1
    assert len(report["total"]["dates"]) == len(report["total"]["counts"])

    # A report without a task clears the worker's task.
    api.call("workers.status_report", {"worker": worker, "machine_stats": None, "queues": [qid]})
    assert "task" not in {w["id"]: w for w in api.call("workers.get_all")["workers"]}[worker]
    api.call("workers.unregister", {"worker": worker, "queues": []})
    assert worker not in _worker_ids(api)


def test_lost_worker_fails_its_task(api: ApiClient) -> None:
    worker = unique("lost") + ":0"
    api.call("workers.register", {"worker": worker, "queues": [], "timeout": 1})
    tid = running_task(api)
    api.call("workers.status_report", {"worker": worker, "task": tid, "machine_stats": None})
    assert worker in _worker_ids(api)
    deadline = time.time() + 10
    while time.time() < deadline and task_of(api, tid)["status"] != "failed":
        time.sleep(0.2)
    task = task_of(api, tid)
    assert task["status"] == "failed" and task["status_reason"] == "worker lost"
    assert worker not in _worker_ids(api)


def test_runtime_properties(api: ApiClient) -> None:
    worker = unique("rt") + ":0"
    api.call("workers.register", {"worker": worker, "queues": []})
    assert api.call("workers.get_runtime_properties", {"worker": worker}) == {"runtime_properties": []}
    api.call("workers.set_runtime_properties", {"worker": worker, "runtime_properties": [
        {"key": "force:gpus", "value": "0,1"}, {"key": "short", "value": "x", "expiry": 1}]})
    props = {p["key"]: p for p in api.call("workers.get_runtime_properties", {"worker": worker})["runtime_properties"]}
    assert props["force:gpus"]["value"] == "0,1" and "expiry" not in props["force:gpus"]
    assert props["short"]["value"] == "x" and 0 <= props["short"]["expiry"] <= 1
    api.call("workers.set_runtime_properties", {"worker": worker, "runtime_properties": [
        {"key": "force:gpus", "value": "2"}]})
    time.sleep(1.3)
    props = api.call("workers.get_runtime_properties", {"worker": worker})["runtime_properties"]
    assert props == [{"key": "force:gpus", "value": "2"}]
    # last_seen: only workers heard from within that many seconds.
    assert worker not in _worker_ids(api, last_seen=1)
    assert worker in _worker_ids(api, last_seen=60) and worker in _worker_ids(api)
    api.call("workers.status_report", {"worker": worker, "machine_stats": None})
    assert worker in _worker_ids(api, last_seen=1)
    api.call("workers.unregister", {"worker": worker})


def test_concurrent_first_reports_and_property_writes(srv: ServerProcess) -> None:
    """Agents report from several threads: a worker's first reports, and writes of one property, may race."""
    from concurrent.futures import ThreadPoolExecutor

    clients = [srv.client() for _ in range(8)]
    for client in clients:
        client.login()
    worker = unique("race") + ":0"

    def report(client: ApiClient) -> dict[str, Any]:
        return client.call("workers.status_report", {"worker": worker, "machine_stats": {"cpu_usage": [1.0]}})

    def set_prop(client: ApiClient) -> dict[str, Any]:
        return client.call("workers.set_runtime_properties", {"worker": worker, "runtime_properties": [
            {"key": "k", "value": str(id(client))}]})

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(report, clients)) == [{}] * 8
        assert list(pool.map(set_prop, clients)) == [{}] * 8
    api = clients[0]
    assert worker in _worker_ids(api)
    props = api.call("workers.get_runtime_properties", {"worker": worker})["runtime_properties"]
    assert len(props) == 1 and props[0]["value"] in {str(id(c)) for c in clients}
    for client in clients:
        client.close()


# --- events ----------------------------------------------------------------------------------------------------------
def test_add_batch_updates_task(api: ApiClient) -> None:
    tid = running_task(api)
    now_ms = int(time.time() * 1000)
    events = [{"type": "log", "task": tid, "level": "info", "worker": "h", "msg": "a\nb\n", "timestamp": now_ms}]
    events += [{"type": "training_stats_scalar", "task": tid, "iter": i, "metric": "loss", "variant": "train",
                "value": v, "timestamp": now_ms + i} for i, v in ((0, 2.0), (5, 0.5), (3, 1.0))]
    events.append({"type": "training_stats_scalar", "task": tid, "iter": 2, "metric": ":monitor:machine",
                   "variant": "cpu_usage", "value": 12.5, "timestamp": now_ms})
    assert api.call_lines("events.add_batch", events) == {"added": 5, "errors": 0, "errors_info": {}}
    task = task_of(api, tid)
    assert task["last_iteration"] == 5
    metrics = {(v["metric"], v["variant"]): v for m in task["last_metrics"].values() for v in m.values()}
    loss = metrics[("loss", "train")]
    assert loss["value"] == 1.0  # the last one sent
    assert (loss["min_value"], loss["max_value"]) == (0.5, 2.0)
    assert metrics[(":monitor:machine", "cpu_usage")]["value"] == 12.5
    # last_iteration never goes back; the SDK's monitor reads it.
    api.call_lines("events.add_batch", [{"type": "training_stats_scalar", "task": tid, "iter": 1, "metric": "loss",
                                         "variant": "train", "value": 0.1}])
    assert api.call("tasks.get_all", {"id": [tid], "only_fields": ["last_iteration"]})["tasks"] == [
        {"id": tid, "last_iteration": 5}]
    loss = {(v["metric"], v["variant"]): v for m in task_of(api, tid)["last_metrics"].values()
            for v in m.values()}[("loss", "train")]
    assert (loss["value"], loss["min_value"], loss["max_value"]) == (0.1, 0.1, 2.0)


def test_add_batch_unknown_task_counted(api: ApiClient) -> None:
    tid = new_task(api)
    data = api.call_lines("events.add_batch", [
        {"type": "log", "task": tid, "msg": "ok 1\n"},
        {"type": "log", "task": "0" * 32, "msg": "lost\n"},
        {"type": "log", "task": tid, "msg": "ok 2\n"},
        {"type": "training_stats_scalar", "task": tid, "metric": "m", "variant": "v", "value": "not a number"}])
    assert data["added"] == 2 and data["errors"] == 2
    assert len(data["errors_info"]) == 2
    assert [e["msg"] for e in api.call("events.get_task_log", {"task": tid, "order": "asc"})["events"]] == [
        "ok 1\n", "ok 2\n"]


def test_get_task_log_paging(api: ApiClient) -> None:
    tid = new_task(api)
    base = int(time.time() * 1000)
    api.call_lines("events.add_batch", [{"type": "log", "task": tid, "level": "info", "msg": f"line {i}",
                                         "timestamp": base + i} for i in range(25)])
    newest = api.call("events.get_task_log", {"task": tid, "batch_size": 10})
    assert [e["msg"] for e in newest["events"]] == [f"line {i}" for i in range(24, 14, -1)]
    assert newest["total"] == 25 and newest["returned"] == 10
    older = api.call("events.get_task_log", {"task": tid, "batch_size": 10, "scroll_id": newest["scroll_id"]})
    assert [e["msg"] for e in older["events"]] == [f"line {i}" for i in range(14, 4, -1)]

    seen: list[str] = []
    scroll = None
    for expected in (10, 10, 5, 0):
        body: dict[str, Any] = {"task": tid, "order": "asc", "batch_size": 10}
        if scroll:
            body["scroll_id"] = scroll
        page = api.call("events.get_task_log", body)
        assert len(page["events"]) == expected
        seen += [e["msg"] for e in page["events"]]
        scroll = page["scroll_id"] or scroll
    assert seen == [f"line {i}" for i in range(25)]
    # A follower that caught up sees new lines with the same scroll id.
    api.call_lines("events.add_batch", [{"type": "log", "task": tid, "msg": "line 25", "timestamp": base + 25}])
    page = api.call("events.get_task_log", {"task": tid, "order": "asc", "batch_size": 10, "scroll_id": scroll})
    assert [e["msg"] for e in page["events"]] == ["line 25"]
    e = page["events"][0]
    assert e["level"] == "info" and e["timestamp"] == base + 25 and e["task"] == tid

