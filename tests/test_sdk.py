"""The real `clearml` SDK from PyPI as a client (clearml-wire.md §6), with the clearml.conf the first start wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _api import module_server
from conftest import ServerProcess
from conveyor.client import ApiClient

pytest.importorskip("clearml")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(request.param, tmp_path_factory.mktemp(f"sdk-{request.param}")) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[ApiClient]:
    with srv.client() as client:
        yield client


def run_sdk(srv: ServerProcess, workdir: Path, code: str, timeout: float = 120) -> dict[str, Any]:
    """Run `code` with the SDK as a user would on the server's machine; its last stdout line is JSON."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env.update(HOME=str(srv.home), CLEARML_CONFIG_FILE=str(srv.config_file), PYTHONUNBUFFERED="1",
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
