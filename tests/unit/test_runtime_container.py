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


class _FakeBundle:
    def __init__(self, root: Path):
        self.host_dir = root / "bundle" / "current"

    def mount(self) -> list[str]:
        return []

    def module_argv(self, *args: str) -> list[str]:
        return ["conveyor-bundle", *args]


def test_a_task_with_its_own_gpus_gets_exactly_those_and_mps_its_pipes(tmp_path: Path) -> None:
    """--dynamic-gpus hands each launch its GPUs in the environment; the container's --gpus follows them."""
    engine = ContainerRuntime.from_cli(config(tmp_path), [], gpus="0,1,2",
                                       fetch_task=lambda _task_id: {"container": {"image": "img"}})
    engine.ensure_image = lambda image: "sha256:abc"  # type: ignore[method-assign]
    engine.prepare_bundle = lambda: _FakeBundle(tmp_path)  # type: ignore[method-assign,assignment,return-value]
    shared = engine.command("t1", task={"container": {"image": "img"}}, env={"NVIDIA_VISIBLE_DEVICES": "2",
                            "CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"})
    argv = shared.argv
    assert argv[argv.index("--gpus") + 1] == '"device=2"'
    assert "/tmp/mps:/tmp/mps" in argv and "--ipc=host" in argv
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25" in argv
    whole = engine.command("t2", task={"container": {"image": "img"}}, env={})
    assert whole.argv[whole.argv.index("--gpus") + 1] == '"device=0,1,2"' and "--ipc=host" not in whole.argv


def test_an_agent_in_a_pod_mounts_the_nodes_paths() -> None:
    """CLEARML_AGENT_K8S_HOST_MOUNT=/host/path:/pod/path: the node's engine gets the node's folders."""
    from conveyor.runtimes import container_args as cargs

    pairs = cargs.host_mounts({"CLEARML_AGENT_K8S_HOST_MOUNT": "/mnt/node/clearml:/root/.clearml"})
    assert pairs == [("/mnt/node/clearml", "/root/.clearml")]
    argv = ["docker", "run", "-v", "/root/.clearml/venvs:/root/.clearml/venvs", "-v", "/root/.clearmlx:/x:ro",
            "-v", "/root/.clearml:/data:ro", "-e", "A=/root/.clearml", "image"]
    assert cargs.to_host_paths(argv, pairs) == [
        "docker", "run", "-v", "/mnt/node/clearml/venvs:/root/.clearml/venvs", "-v", "/root/.clearmlx:/x:ro",
        "-v", "/mnt/node/clearml:/data:ro", "-e", "A=/root/.clearml", "image"]
    assert cargs.host_mounts({"CLEARML_AGENT_DOCKER_HOST_MOUNT": "relative:/x"}) == []
