"""A standby executor's prepared session serves its task only when the task's environment configures the same
connection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor.agent.session import PreparedClient
from conveyor.client import ApiClient
from conveyor.config import load_config
from conveyor.errors import ConveyorError


@pytest.fixture(autouse=True)
def instant_login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApiClient, "auth_token", lambda self: "token")


def ready(prepared: PreparedClient) -> PreparedClient:
    deadline = time.monotonic() + 10
    while not prepared._login.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return prepared


def test_the_prepared_client_serves_the_same_configuration_only(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"HOME": str(tmp_path), "CLEARML_API_HOST": "http://127.0.0.1:1"}
    prepared = ready(PreparedClient(load_config(environ=env)))
    assert prepared.client_for(load_config(environ=env)) is prepared.client
    assert prepared.client_for(load_config(environ={**env, "CLEARML_WORKER_ID": "other"})) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # httpx reads it when a client is made
    assert prepared.client_for(load_config(environ=env)) is None


def test_a_failed_login_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: ApiClient) -> str:
        raise ConveyorError("server away")

    monkeypatch.setattr(ApiClient, "auth_token", refused)
    env = {"HOME": str(tmp_path)}
    prepared = ready(PreparedClient(load_config(environ=env)))
    assert prepared.client_for(load_config(environ=env)) is None
