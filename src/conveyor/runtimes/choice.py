"""Which runtime a daemon gets from its options: local processes, or containers with --docker / --podman."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from conveyor.config import Config
from conveyor.runtimes.base import Runtime


def runtime_for(cfg: Config, docker: Sequence[str] | None, *, podman: bool = False, gpus: str | None = None,
                fetch_task: Callable[[str], dict[str, Any]] | None = None) -> Runtime:
    """`docker` is None for local processes, else `--docker [IMAGE [ENGINE ARGS...]]` (maybe empty)."""
    if docker is None:
        from conveyor.runtimes.local import LocalRuntime

        return LocalRuntime(str(cfg.path) if cfg.path else None, standby=bool(cfg.get("agent.standby_executor")))
    from conveyor.runtimes.container import ContainerRuntime

    return ContainerRuntime.from_cli(cfg, docker, podman=podman, gpus=gpus, fetch_task=fetch_task)
