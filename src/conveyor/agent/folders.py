"""Where the agent works on disk."""

from __future__ import annotations

from pathlib import Path

from conveyor.config import Config
from conveyor.errors import TaskFailure


def venvs_dir(cfg: Config) -> Path:
    """agent.venvs_dir (defaults.conf sets it): task venvs, task work folders, `conveyor build` folders."""
    path = cfg.get_path("agent.venvs_dir")
    if path is None:
        raise TaskFailure("agent.venvs_dir is empty: set it to a folder where task venvs can be built")
    return path
