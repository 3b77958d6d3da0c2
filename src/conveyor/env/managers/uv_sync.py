"""uv with the repository's own lock: `uv sync --frozen` of uv.lock into a venv the agent creates, as the reference
does for `agent.package_manager.type: uv` (the task's requirement list is not used). Chosen instead of plain uv when
the project folder has uv.lock; never cached, since it installs the repository's own project too."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.env.managers.base import BuildSpec, Log, config_list, run_streamed
from conveyor.env.managers.uv import UvManager, link_mode, require_uv, uv_env

LOCK_FILE = "uv.lock"
_CHANGED = re.compile(r"^\s*\+\s+\S")  # uv's " + six==1.16.0"


def project_dir(spec: BuildSpec) -> Path | None:
    """Where uv.lock is looked for: the repository root, or the working dir (uv_files_from_repo_working_dir)."""
    if spec.cfg.get("agent.package_manager.uv_files_from_repo_working_dir"):
        return spec.work_dir
    return spec.base_dir or spec.work_dir


def has_lock(spec: BuildSpec) -> bool:
    folder = project_dir(spec)
    return folder is not None and (folder / LOCK_FILE).is_file()


class UvSyncManager:
    name = "uv sync"
    installs_project = True  # runs even without requirement lines; never cached

    def key_options(self, spec: BuildSpec) -> dict:
        return {}

    def create(self, spec: BuildSpec, path: Path, log: Log) -> Path:
        return UvManager().create(spec, path, log)

    def install(self, spec: BuildSpec, python: Path, log: Log) -> int:
        venv = python.parent.parent
        locked = bool(spec.cfg.get("agent.package_manager.uv_sync_locked_if_lock_file"))
        cmd = [require_uv(), "sync", "--locked" if locked else "--frozen", "--python", str(python),
               *config_list(spec.cfg, "agent.package_manager.uv_sync_extra_args")]
        mode = link_mode(spec, venv)
        if mode:
            cmd += ["--link-mode", mode]
        # UV_PROJECT_ENVIRONMENT: our venv, not the repository's .venv
        env = {**uv_env(spec), "UV_PROJECT_ENVIRONMENT": str(venv)}
        out = run_streamed(cmd, log=log, env=env, cwd=project_dir(spec), what="Could not install uv.lock with uv sync",
                           hint="Check that uv.lock matches pyproject.toml (`uv lock`) and that its Python "
                                "requirement admits this worker's Python")
        return sum(1 for line in out if _CHANGED.match(line))
