"""poetry: `poetry install` of the repository's lock file into a venv the agent creates (the task's own
requirement list is ignored, as in the reference). Used only when poetry is installed and the project
has pyproject.toml and poetry.lock; otherwise the caller falls back to pip."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from conveyor.env.managers.base import (
    BuildSpec,
    Log,
    config_list,
    find_uv,
    installer_env,
    run_streamed,
)
from conveyor.env.managers.pip import PipManager
from conveyor.env.managers.uv import UvManager

_INSTALLING = re.compile(r"^\s*-\s+(?:Installing|Updating|Downgrading)\s")  # "  - Installing six (1.16.0)"
LOCK_FILES = ("pyproject.toml", "poetry.lock")


def find_poetry() -> str | None:
    return shutil.which("poetry")


def project_dir(spec: BuildSpec) -> Path | None:
    """Where pyproject.toml and poetry.lock are looked for: the repository root, or the working dir."""
    if spec.cfg.get("agent.package_manager.poetry_files_from_repo_working_dir"):
        return spec.work_dir
    return spec.base_dir or spec.work_dir


def unusable_reason(spec: BuildSpec) -> str | None:
    """Why poetry cannot build this environment, or None when it can."""
    if find_poetry() is None:
        return "poetry is not installed on this worker"
    folder = project_dir(spec)
    if folder is None or not all((folder / name).is_file() for name in LOCK_FILES):
        return "the repository has no pyproject.toml with poetry.lock"
    return None


class PoetryManager:
    name = "poetry"
    installs_project = True  # runs even without requirement lines; never cached

    def key_options(self, spec: BuildSpec) -> dict:
        return {}  # never cached: it installs the repository's own project

    def create(self, spec: BuildSpec, path: Path, log: Log) -> Path:
        # poetry installs with its own installer, so a venv without pip will do: uv's takes 0.05 s, venv's 5 s
        return (UvManager() if find_uv() else PipManager()).create(spec, path, log)

    def install(self, spec: BuildSpec, python: Path, log: Log) -> int:
        venv = python.parent.parent
        # an active venv (VIRTUAL_ENV) is where poetry installs; never one of its own
        env = installer_env({"VIRTUAL_ENV": str(venv), "POETRY_VIRTUALENVS_CREATE": "false",
                             "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
        cmd = [find_poetry() or "poetry", "install", "-n",
               *config_list(spec.cfg, "agent.package_manager.poetry_install_extra_args")]
        out = run_streamed(cmd, log=log, env=env, cwd=project_dir(spec), what="Could not install with poetry",
                           hint="Check that poetry.lock matches pyproject.toml (`poetry lock`)")
        return sum(1 for line in out if _INSTALLING.match(line))
