"""ApiClient against the real server app, in this process: the ASGI app runs behind starlette's TestClient transport
on a SQLite database in tmp_path. No subprocess, no port."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conveyor.client import ApiCallError, ApiClient, AuthError
from conveyor.client import task_builder as tb
from conveyor.config import defaults, load_config
from conveyor.server.app import create_app
from conveyor.server.runner import build_state, options_from

HOST = "http://testserver"


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """The server's app on a fresh database; yields its test client and the clearml.conf of its first start."""
    cfg = defaults()
    opts = options_from(cfg, data_dir=str(tmp_path / "data"), client_config=str(tmp_path / "clearml.conf"))
    state = build_state(cfg, opts)  # first start: a user, credentials (written to clearml.conf), a default queue
    try:
        with TestClient(create_app(state, web=False), base_url=HOST) as app:
            yield app, opts.client_config
    finally:
        state.store.dispose()


def client_of(server: tuple[TestClient, Path], **kw: object) -> ApiClient:
    app, conf = server
    # TestClient is an httpx.Client; its transport runs requests through the app (httpx has no public getter)
    return ApiClient.from_config(load_config(conf), host=HOST, transport=app._transport, max_retries=0, **kw)


def test_login_create_enqueue_and_read_back(server: tuple[TestClient, Path]) -> None:
    with client_of(server) as client:
        claims = client.login()
        assert claims["identity"]["user"]
        queue = tb.find_queue(client, "default")
        created = client.tasks.create(name="in-process", type="training")
        client.tasks.enqueue(task=created["id"], queue=queue["id"])
        task = tb.get_task(client, created["id"], only_fields=["id", "name", "status", "execution.queue"])
    assert task["name"] == "in-process"
    assert task["status"] == "queued"
    assert task["execution"]["queue"] == queue["id"]


def test_a_refusal_is_an_api_call_error_with_the_servers_message(server: tuple[TestClient, Path]) -> None:
    with client_of(server) as client, pytest.raises(ApiCallError) as err:
        client.tasks.get_by_id(task="no-such-task")
    assert (err.value.code, err.value.subcode) == (400, 101)
    assert str(err.value) == "tasks.get_by_id failed (400/101): Invalid task id: id=no-such-task"


def test_a_wrong_secret_is_an_auth_error_that_says_what_to_check(server: tuple[TestClient, Path]) -> None:
    with client_of(server, secret_key="not-the-secret") as client, pytest.raises(AuthError) as err:
        client.call("tasks.get_all", {})
    assert err.value.code == 401
    assert str(err.value).startswith(f"Login to {HOST} failed: the access key or secret was refused — check "
                                     "api.credentials in ")


def test_tasks_update_changes_a_queued_tasks_message_and_name_not_its_status(
        server: tuple[TestClient, Path]) -> None:
    """What a glue writes while the task waits in a cluster; tasks.edit would refuse a queued task."""
    with client_of(server) as client:
        queue = tb.find_queue(client, "default")
        created = client.tasks.create(name="waits", type="training")
        client.tasks.enqueue(task=created["id"], queue=queue["id"])
        with pytest.raises(ApiCallError):
            client.call("tasks.edit", {"task": created["id"], "name": "renamed"})
        answer = client.call("tasks.update", {"task": created["id"], "status_message": "slurm job 7 pending: Resources",
                                              "name": "renamed", "status": "completed"})
        task = tb.get_task(client, created["id"], only_fields=["name", "status", "status_message"])
    assert answer["updated"] == 1
    assert task == {"id": created["id"], "name": "renamed", "status": "queued",
                    "status_message": "slurm job 7 pending: Resources"}


def test_only_an_https_server_costs_a_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle takes ~30 ms in every process that makes a client; a plain-http server never uses it."""
    loaded: list[object] = []
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *args, **kw: loaded.append(args))
    ApiClient("http://127.0.0.1:8008", "k", "s")
    assert not loaded
    ApiClient("https://api.example.invalid", "k", "s")
    assert loaded
