"""The container runtime's failures as the daemon sees them, without an engine: what the user must fix before the
daemon can start, and what fails one task but not the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_agent_daemon import config

from conveyor.errors import TaskFailure, UserError
from conveyor.runtimes.base import Runtime, TaskRun
from conveyor.runtimes.container import ContainerRuntime


def runtime(tmp_path: Path, task: dict[str, Any] | None = None, **agent: Any) -> ContainerRuntime:
    cfg = config(tmp_path, **{"default_docker": {"image": "", "arguments": []}, **agent})
    return ContainerRuntime.from_cli(cfg, [], gpus="none", fetch_task=lambda _task_id: task or {})


def test_an_engine_that_is_not_installed_stops_the_daemon_with_what_to_do(tmp_path: Path) -> None:
    engine: Runtime = runtime(tmp_path, docker_command=str(tmp_path / "no-such-docker"))
    with pytest.raises(UserError, match="container engine: no .*no-such-docker command on this machine"):
        engine.adopt("host:0")


def test_a_task_without_an_image_fails_to_start_with_where_to_set_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLEARML_DOCKER_IMAGE", raising=False)
    engine: Runtime = runtime(tmp_path, task={"container": {}})
    with pytest.raises(TaskFailure, match="^container failed to start: no container image: set "
                                          "agent.default_docker.image"):
        engine.launch(TaskRun("t1", "q", "host:0"), {})


def test_the_banner_names_the_engine(tmp_path: Path) -> None:
    assert runtime(tmp_path).describe() == "tasks in docker containers"
    assert runtime(tmp_path, docker_command="podman --remote").describe() == "tasks in podman containers"
