"""uv: `uv venv` + `uv pip install`, with one download/wheel cache shared by every task on the worker."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from conveyor.env.managers.base import (
    BuildSpec,
    EnvBuildError,
    Log,
    config_list,
    find_uv,
    installer_env,
    run_streamed,
    venv_python,
    write_requirements,
)

_INSTALLED = re.compile(r"^\s*\+\s+\S")  # uv's " + six==1.16.0"
INSTALL_HINT = ("Check the task's requirements (script.requirements.pip, or the repository's requirements.txt) "
                "and the package index settings (agent.package_manager.extra_index_url)")


def require_uv() -> str:
    uv = find_uv()
    if uv is None:
        raise EnvBuildError("uv is not installed on this worker: `pip install uv` in the agent's environment, "
                            "or set agent.package_manager.type to pip")
    return uv


def uv_cache_dir(spec: BuildSpec) -> Path | None:
    """UV_CACHE_DIR when set (uv's own convention), else agent.package_manager.uv_cache_dir; None = uv's default."""
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    return spec.cfg.get_path("agent.package_manager.uv_cache_dir")


def link_mode(spec: BuildSpec, venv: Path) -> str | None:
    """Hard links are free but only work within one filesystem; uv would try them, warn and copy anyway."""
    chosen = spec.cfg.get("agent.package_manager.uv_link_mode")
    if chosen:
        return str(chosen)
    cache = uv_cache_dir(spec)
    if cache is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    return "hardlink" if _device(cache) == _device(venv) else "copy"


def _device(path: Path) -> int:
    while not path.exists():  # the venv is not created yet: its nearest existing parent decides
        path = path.parent
    return path.stat().st_dev


def uv_env(spec: BuildSpec) -> dict[str, str]:
    extra = {"UV_PYTHON_DOWNLOADS": "never",  # the worker may be offline but for the index: never fetch pythons
             "UV_NO_PROGRESS": "1"}
    cache = uv_cache_dir(spec)
    if cache is not None:
        extra["UV_CACHE_DIR"] = str(cache)
    urls = config_list(spec.cfg, "agent.package_manager.extra_index_url")
    if urls:  # through the environment, so that credentials in them stay out of the process list
        extra["UV_EXTRA_INDEX_URL"] = " ".join(urls)
    return installer_env(extra)


class UvManager:
    name = "uv"
    installs_project = False

    def key_options(self, spec: BuildSpec) -> dict:
        return {"unsafe_best_match": bool(spec.cfg.get("agent.package_manager.uv_unsafe_best_match"))}

    def create(self, spec: BuildSpec, path: Path, log: Log) -> Path:
        cmd = [require_uv(), "venv", "--python", str(spec.base_python)]
        if spec.cfg.get("agent.package_manager.system_site_packages"):
            cmd.append("--system-site-packages")
        run_streamed([*cmd, str(path)], log=log, what="Could not create the venv with uv", env=uv_env(spec),
                     cwd=path.parent, hint="Check that the Python interpreter works and the disk is writable")
        return venv_python(path)

    def install(self, spec: BuildSpec, python: Path, log: Log) -> int:
        if not spec.lines:
            return 0
        with tempfile.TemporaryDirectory(prefix="conveyor-req-") as tmp:
            req = write_requirements(spec.lines, Path(tmp), spec.base_dir)
            cmd = [require_uv(), "pip", "install", "--python", str(python), "-r", str(req)]
            mode = link_mode(spec, python.parent.parent)
            if mode:
                cmd += ["--link-mode", mode]
            if spec.cfg.get("agent.package_manager.force_upgrade"):
                cmd.append("--upgrade")
            if spec.cfg.get("agent.package_manager.uv_unsafe_best_match"):
                cmd += ["--index-strategy", "unsafe-best-match"]
            # cwd: relative paths in the lines are the repository's; without one, a dir with no uv config in it
            out = run_streamed(cmd, log=log, what="Could not install requirements", env=uv_env(spec),
                               cwd=spec.base_dir or Path(tmp), hint=INSTALL_HINT)
        return sum(1 for line in out if _INSTALLED.match(line))
