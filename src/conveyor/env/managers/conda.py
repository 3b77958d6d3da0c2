"""conda (or mamba, micromamba): `create -p <env> python=X`, the task's conda packages, then its pip lines."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from conveyor.env.managers.base import (
    BuildSpec,
    EnvBuildError,
    Log,
    config_list,
    installer_env,
    run_streamed,
    write_requirements,
)
from conveyor.env.managers.pip import _count_installed, pip_env
from conveyor.env.managers.uv import INSTALL_HINT

TOOLS = ("micromamba", "mamba", "conda")  # the first found is used: they take the same arguments


def find_conda() -> str | None:
    return next((path for path in map(shutil.which, TOOLS) if path), None)


def require_conda() -> str:
    tool = find_conda()
    if tool is None:
        raise EnvBuildError("conda is not installed on this worker: install it or set agent.package_manager.type to uv")
    return tool


def _channels(spec: BuildSpec) -> list[str]:
    return [arg for ch in config_list(spec.cfg, "agent.package_manager.conda_channels") for arg in ("-c", ch)]


class CondaManager:
    name = "conda"
    installs_project = False

    def key_options(self, spec: BuildSpec) -> dict:
        return {"channels": config_list(spec.cfg, "agent.package_manager.conda_channels")}

    def create(self, spec: BuildSpec, path: Path, log: Log) -> Path:
        tool = require_conda()
        run_streamed([tool, "create", "-y", "-p", str(path), f"python={spec.python_version}", *_channels(spec)],
                     log=log, env=installer_env(), what="Could not create the conda environment",
                     hint="Check agent.package_manager.conda_channels and that the channels are reachable")
        return path / "bin" / "python"

    def install(self, spec: BuildSpec, python: Path, log: Log) -> int:
        count = 0
        if spec.conda_lines:
            tool = require_conda()
            out = run_streamed([tool, "install", "-y", "-p", str(python.parent.parent), *_channels(spec),
                                *spec.conda_lines], log=log, env=installer_env(),
                               what="Could not install conda packages", hint=INSTALL_HINT)
            count += sum(1 for line in out if line.strip().startswith("+ "))
        if spec.lines:
            with tempfile.TemporaryDirectory(prefix="conveyor-req-") as tmp:
                req = write_requirements(spec.lines, Path(tmp), spec.base_dir)
                out = run_streamed([str(python), "-m", "pip", "install", "-r", str(req)], log=log,
                                   env=pip_env(spec), cwd=spec.base_dir or Path(tmp),
                                   what="Could not install requirements", hint=INSTALL_HINT)
            count += _count_installed(out)
        return count
