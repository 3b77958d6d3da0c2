"""The real `clearml` SDK from PyPI as a client (clearml-wire.md §6), with the clearml.conf the first start wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _api import module_server
from conftest import ServerProcess
from conveyor.client import ApiClient
from test_services import FULL


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(request.param, tmp_path_factory.mktemp(f"sdk-{request.param}")) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[ApiClient]:
    with srv.client() as client:
        yield client


def run_sdk(srv: ServerProcess, workdir: Path, code: str, timeout: float = 120,
            config_file: Path | None = None) -> dict[str, Any]:
    """Run `code` with the SDK as a user would on the server's machine (with `config_file`'s credentials, by default
    the first-start admin's); its last stdout line is JSON."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env.update(HOME=str(srv.home), CLEARML_CONFIG_FILE=str(config_file or srv.config_file), PYTHONUNBUFFERED="1",
               CLEARML_LOG_LEVEL="WARNING")
    result = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nserver:\n{srv.output()}"
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON answer in:\n{result.stdout}\n{result.stderr}"
    answer = json.loads(lines[-1])
    answer["_stdout"], answer["_stderr"] = result.stdout, result.stderr
    return answer


def test_config_written_at_first_start(srv: ServerProcess) -> None:
    text = srv.config_file.read_text()
    assert srv.url in text
    key, secret = srv.credentials()
    assert key in text and secret in text


def test_api_client_lists_default_queue(srv: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    answer = run_sdk(srv, tmp_path, """
        import json
        from clearml.backend_api.session.client import APIClient
        client = APIClient()
        queues = client.queues.get_all()
        print(json.dumps({"queues": [{"id": q.id, "name": q.name} for q in queues]}))
    """)
    default = api.call("queues.get_default")
    assert {"id": default["id"], "name": "default"} in answer["queues"]


def test_api_client_forces_a_queue_on_and_wakes_a_waiting_daemon(srv: ServerProcess, api: ApiClient,
                                                                   tmp_path: Path) -> None:
    """The docs' snippet for forcing workers: a daemon long-polling the queue is told to look again."""
    import threading

    qid = api.call("queues.create", {"name": f"forced-{uuid.uuid4().hex[:6]}"})["id"]
    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(api.call(
        "queues.get_next_task", {"queue": qid, "wait": 20, "worker": "w-forced"}, timeout=40)))
    waiting.start()
    time.sleep(0.5)
    started = time.monotonic()
    run_sdk(srv, tmp_path, f"""
        import json
        from clearml.backend_api.session.client import APIClient
        APIClient().queues.update(queue={qid!r}, tags=["force_workers:on"])
        print(json.dumps({{}}))
    """)
    waiting.join(30)
    assert answers == [{}] and time.monotonic() - started < 15  # ended by the change, long before its 20 s
    assert api.call("queues.get_by_id", {"queue": qid})["queue"]["tags"] == ["force_workers:on"]
    api.call("queues.delete", {"queue": qid, "force": True})


def test_task_create_enqueue_then_pop(srv: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("print('training')\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "init"], check=True)
    project, name = f"sdk-{uuid.uuid4().hex[:6]}", f"created-{uuid.uuid4().hex[:6]}"
    # Take anything the default queue already holds out of the way (other tests share the server).
    api.call("queues.clear_queue", {"queue": api.call("queues.get_default")["id"]})
    answer = run_sdk(srv, tmp_path / "work", f"""
        import json
        from clearml import Task
        task = Task.create(project_name={project!r}, task_name={name!r}, repo={repo.as_uri()!r}, branch="main",
                           script="train.py", add_task_init_call=False)
        Task.enqueue(task, queue_name="default")
        print(json.dumps({{"id": task.id}}))
    """)
    tid = answer["id"]
    task = api.call("tasks.get_by_id", {"task": tid})["task"]
    assert task["name"] == name and task["status"] == "queued"
    assert "development" not in task["system_tags"]
    assert task["script"]["repository"] == repo.as_uri() and task["script"]["entry_point"] == "train.py"
    projects = api.call("projects.get_all", {"name": f"^{project}$"})["projects"]
    assert [p["id"] for p in projects] == [task["project"]]
    default = api.call("queues.get_default")["id"]
    assert task["execution"]["queue"] == default
    assert api.call("queues.get_next_task", {"queue": default})["entry"]["task"] == tid
    assert api.call("queues.get_next_task", {"queue": default}) == {}


def test_task_init_script_completes(srv: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    project, name = f"init-{uuid.uuid4().hex[:6]}", f"local-{uuid.uuid4().hex[:6]}"
    answer = run_sdk(srv, tmp_path, f"""
        import json
        from clearml import Task
        task = Task.init(project_name={project!r}, task_name={name!r}, reuse_last_task_id=False,
                         auto_connect_frameworks=False, auto_resource_monitoring=False)
        params = task.connect({{"lr": 0.1, "epochs": 3}})
        logger = task.get_logger()
        for i in range(3):
            logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i + 1)
        print("hello from the training script")
        task_id = task.id
        task.close()
        print(json.dumps({{"id": task_id, "lr": params["lr"]}}))
    """)
    tid = answer["id"]
    assert answer["lr"] == 0.1
    task = api.call("tasks.get_by_id", {"task": tid})["task"]
    assert task["name"] == name and task["status"] == "completed", task
    assert task["hyperparams"]["General"]["lr"]["value"] == "0.1"
    assert task["hyperparams"]["General"]["epochs"]["value"] == "3"
    assert task["last_iteration"] == 3
    metrics = {(v["metric"], v["variant"]): v for m in task["last_metrics"].values() for v in m.values()}
    assert metrics[("loss", "train")]["value"] == pytest.approx(1 / 3)
    assert metrics[("loss", "train")]["max_value"] == pytest.approx(1.0)
    assert task["script"]["entry_point"] == "script.py"
    assert "clearml" in task["script"]["requirements"]["pip"]
    log = api.call("events.get_task_log", {"task": tid, "order": "asc", "batch_size": 1000})["events"]
    assert any("hello from the training script" in e["msg"] for e in log)
    assert api.call("projects.get_by_id", {"project": task["project"]})["project"]["name"] == project


def test_task_init_rerun_reuses_task(srv: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    """The second run of one script reuses its task (§6.3): tasks.reset with force false, then it runs again."""
    project, name = f"rerun-{uuid.uuid4().hex[:6]}", f"again-{uuid.uuid4().hex[:6]}"
    code = f"""
        import json
        from clearml import Task
        task = Task.init(project_name={project!r}, task_name={name!r}, auto_connect_frameworks=False,
                         auto_resource_monitoring=False)
        print("rerun-marker")
        task.get_logger().report_scalar("acc", "val", value=0.5, iteration=2)
        task_id = task.id
        task.close()
        print(json.dumps({{"id": task_id}}))
    """
    first = run_sdk(srv, tmp_path / "a", code)["id"]
    second = run_sdk(srv, tmp_path / "a", code)["id"]
    assert second == first
    task = api.call("tasks.get_by_id", {"task": first})["task"]
    assert task["status"] == "completed" and task["last_iteration"] == 2
    log = api.call("events.get_task_log", {"task": first, "order": "asc", "batch_size": 1000})["events"]
    assert sum("rerun-marker" in e["msg"] for e in log) == 1  # the first run's log went with the reset


def test_sdk_queries_clone_and_dequeue(srv: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    project = f"query-{uuid.uuid4().hex[:6]}"
    qid = api.call("queues.create", {"name": f"sdkq-{uuid.uuid4().hex[:6]}"})["id"]
    answer = run_sdk(srv, tmp_path, f"""
        import json
        from clearml import Task
        first = Task.create(project_name={project!r}, task_name="one", script="train.py", add_task_init_call=False)
        Task.create(project_name={project!r}, task_name="two", script="train.py", add_task_init_call=False)
        names = sorted(t.name for t in Task.get_tasks(project_name={project!r}))
        by_name = [t.id for t in Task.get_tasks(project_name={project!r}, task_name="^one$")]
        clone = Task.clone(source_task=first, name="one clone")
        Task.enqueue(clone, queue_id={qid!r})
        queued = Task.get_task(task_id=clone.id).get_status()
        Task.dequeue(clone)
        print(json.dumps({{"names": names, "by_name": by_name, "first": first.id, "clone": clone.id,
                           "queued": str(queued), "after": str(Task.get_task(task_id=clone.id).get_status())}}))
    """)
    assert answer["names"] == ["one", "two"]
    assert answer["by_name"] == [answer["first"]]
    assert answer["queued"] == "queued" and answer["after"] == "created"
    clone = api.call("tasks.get_by_id", {"task": answer["clone"]})["task"]
    assert clone["name"] == "one clone" and clone["parent"] == answer["first"]
    assert api.call("queues.get_by_id", {"queue": qid})["queue"]["entries"] == []

def test_sdk_with_a_user_credential(srv: ServerProcess, api: ApiClient, tmp_path: Path) -> None:
    """A `user` (not an admin) works with the SDK as before: Task.init, Task.create + enqueue, clone of someone else's
    task; what the SDK makes is hers, and someone else's task refuses her changes with the reason."""
    from conveyor.config import write_api_section

    name = f"sdk-user-{uuid.uuid4().hex[:6]}"
    user_id = api.call("users.create", {"name": name, "role": "user"})["id"]
    creds = api.call("auth.create_credentials", {"user": name})["credentials"]
    conf = tmp_path / "clearml.conf"
    write_api_section(conf, srv.url, srv.url, f"{srv.url}/files", creds["access_key"], creds["secret_key"])
    admins = api.call("tasks.create", {"name": "the admin's", "type": "training",
                                       "script": {"repository": "file:///tmp/r", "entry_point": "train.py"}})["id"]
    qid = api.call("queues.create", {"name": f"userq-{uuid.uuid4().hex[:6]}"})["id"]
    project = f"user-{uuid.uuid4().hex[:6]}"
    answer = run_sdk(srv, tmp_path / "work", f"""
        import json
        from clearml import Task
        task = Task.init(project_name={project!r}, task_name="mine", reuse_last_task_id=False,
                         auto_connect_frameworks=False, auto_resource_monitoring=False)
        task.connect({{"lr": 0.1}})
        task.get_logger().report_scalar("loss", "train", value=0.5, iteration=1)
        print("user's run")
        init_id = task.id
        task.close()
        made = Task.create(project_name={project!r}, task_name="made", script="train.py", add_task_init_call=False)
        Task.enqueue(made, queue_id={qid!r})
        clone = Task.clone(source_task={admins!r}, name="my clone")
        Task.enqueue(clone, queue_id={qid!r})
        try:
            Task.enqueue({admins!r}, queue_id={qid!r})
            refusal = ""
        except Exception as exc:
            refusal = str(exc)
        print(json.dumps({{"init": init_id, "made": made.id, "clone": clone.id, "refusal": refusal}}))
    """, config_file=conf)
    for key, status in (("init", "completed"), ("made", "queued"), ("clone", "queued")):
        task = api.call("tasks.get_by_id", {"task": answer[key]})["task"]
        assert (task["user"], task["status"]) == (user_id, status), key
    assert api.call("tasks.get_by_id", {"task": answer["init"]})["task"]["last_iteration"] == 1
    assert "belongs to" in answer["refusal"] and "only its owner or an admin can enqueue it" in answer["refusal"]
    assert api.call("tasks.get_by_id", {"task": admins})["task"]["status"] == "created"
    assert [e["task"] for e in api.call("queues.get_by_id", {"queue": qid})["queue"]["entries"]] == [
        answer["made"], answer["clone"]]


# --- every answer parses with the SDK's own response classes ------------------------------------------------------
def _sdk_responses() -> dict[str, Any]:
    import importlib

    classes: dict[str, Any] = {}
    for service in ("auth", "events", "projects", "queues", "tasks", "workers"):
        module = importlib.import_module(f"clearml.backend_api.services.v2_23.{service}")
        for request, response in module.response_mapping.items():
            classes[f"{request._service}.{request._action}"] = response
    return classes


class Recorder:
    """Our client, keeping every answer so that it can be checked against the SDK's schema afterwards."""

    def __init__(self, api: ApiClient):
        self.api = api
        self.answers: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = self.api.call(endpoint, body or {})
        self.answers.append((endpoint, data))
        return data

    def lines(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        data = self.api.call_lines("events.add_batch", events)
        self.answers.append(("events.add_batch", data))
        return data


def test_answers_parse_with_sdk_schemas(api: ApiClient) -> None:
    """What the SDK does with each answer (`Response.from_dict`), and its JSON schema, for every call we serve."""
    import jsonschema

    call = Recorder(api)
    pid = call("projects.create", {"name": f"schema-{uuid.uuid4().hex[:6]}"})["id"]
    call("projects.get_by_id", {"project": pid})
    call("projects.get_all", {"name": "^schema-"})
    call("projects.update", {"project": pid, "description": "d"})
    qid = call("queues.create", {"name": f"schema-{uuid.uuid4().hex[:6]}"})["id"]
    call("queues.get_default")
    call("queues.update", {"queue": qid, "tags": ["x"]})
    tid = call("tasks.create", {"name": "schema", "project": pid, **FULL})["id"]
    call("tasks.edit", {"task": tid, "comment": "c", "hyperparams": {"Args": {"lr": {
        "section": "Args", "name": "lr", "value": "0.1", "type": "float", "description": ""}}}})
    call("tasks.set_requirements", {"task": tid, "requirements": {"pip": "numpy\n"}})
    call("tasks.edit_hyper_params", {"task": tid, "hyperparams": [{"section": "Args", "name": "bs", "value": "2"}]})
    call("tasks.get_hyper_params", {"tasks": [tid]})
    call("tasks.delete_hyper_params", {"task": tid, "hyperparams": [{"section": "Args", "name": "bs"}]})
    call("tasks.edit_configuration", {"task": tid, "configuration": [{"name": "cfg", "value": "a: 1", "type": "yaml"}]})
    call("tasks.get_configurations", {"tasks": [tid]})
    clone = call("tasks.clone", {"task": tid})["id"]
    call("tasks.enqueue", {"task": tid, "queue": qid})
    call("queues.get_by_id", {"queue": qid})
    call("queues.get_all", {"id": [qid]})
    call("queues.add_task", {"queue": qid, "task": clone})
    call("queues.peek_task", {"queue": qid})
    call("queues.get_num_entries", {"queue": qid})
    call("queues.move_task_to_back", {"queue": qid, "task": tid})
    call("queues.move_task_to_front", {"queue": qid, "task": tid})
    call("queues.move_task_backward", {"queue": qid, "task": tid})
    call("queues.move_task_forward", {"queue": qid, "task": tid})
    call("queues.remove_task", {"queue": qid, "task": clone})
    call("queues.get_next_task", {"queue": qid})
    call("queues.get_next_task", {"queue": qid})
    call("tasks.started", {"task": tid, "force": True})
    worker = f"schema-{uuid.uuid4().hex[:6]}:0"
    call("workers.register", {"worker": worker, "queues": [qid]})
    call("workers.status_report", {"worker": worker, "task": tid, "queue": qid, "timestamp": int(time.time() * 1000),
                                   "machine_stats": {"cpu_usage": [1.0], "memory_used": 10.0}})
    call("workers.get_all", {})
    now = time.time()
    call("workers.get_activity_report", {"from_date": now - 60, "to_date": now + 1, "interval": 10})
    call("workers.get_stats", {"from_date": now - 60, "to_date": now + 1, "interval": 10,
                               "items": [{"key": "cpu_usage", "category": "avg"}], "worker_ids": [worker]})
    call.lines([{"type": "log", "task": tid, "msg": "m", "level": "info", "timestamp": int(now * 1000)},
                {"type": "training_stats_scalar", "task": tid, "iter": 1, "metric": "m", "variant": "v", "value": 1.0}])
    call("events.get_task_log", {"task": tid})
    call("events.get_task_events", {"task": tid})
    call("events.get_scalar_metrics_and_variants", {"task": tid})
    call("events.scalar_metrics_iter_histogram", {"task": tid})
    call("tasks.ping", {"task": tid})
    call("tasks.add_or_update_artifacts", {"task": tid, "artifacts": [{"key": "a", "type": "str", "mode": "output"}]})
    call("tasks.get_by_id", {"task": tid})
    call("tasks.get_all", {"id": [tid]})
    call("tasks.stop", {"task": tid})
    call("tasks.stopped", {"task": tid})
    call("tasks.reset", {"task": tid})
    call("tasks.started", {"task": tid})
    call("tasks.failed", {"task": tid})
    call("tasks.reset", {"task": tid})
    call("tasks.started", {"task": tid})
    call("tasks.completed", {"task": tid})
    call("tasks.close", {"task": tid, "force": True})
    call("tasks.publish", {"task": tid, "force": True})
    call("tasks.enqueue", {"task": clone, "queue": qid})
    call("tasks.dequeue", {"task": clone})
    call("events.delete_for_task", {"task": tid})
    call("queues.clear_queue", {"queue": qid})
    call("tasks.delete", {"task": clone})
    call("tasks.delete", {"task": tid, "force": True})
    call("queues.delete", {"queue": qid, "force": True})
    call("projects.delete", {"project": pid})
    creds = call("auth.create_credentials", {"label": "schema"})["credentials"]
    call("auth.get_credentials", {})
    call("auth.edit_credentials", {"access_key": creds["access_key"], "label": "renamed"})
    call("auth.revoke_credentials", {"access_key": creds["access_key"]})
    call("workers.unregister", {"worker": worker})

    classes = _sdk_responses()
    problems = []
    checked = set()
    for endpoint, data in call.answers:
        response = classes.get(endpoint)
        if response is None:
            continue
        checked.add(endpoint)
        try:
            response.from_dict(data)
        except Exception as exc:
            problems.append(f"{endpoint}: the SDK cannot parse {data!r}: {exc}")
        try:
            jsonschema.validate(data, response._schema)
        except jsonschema.ValidationError as exc:
            problems.append(f"{endpoint}: {exc.message} at {'/'.join(map(str, exc.absolute_path))}")
    assert len(checked) >= 50
    assert not problems, "\n".join(problems)
