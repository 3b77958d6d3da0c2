"""pip: `python -m venv`, pip pinned per agent.package_manager.pip_version, then `pip install -r`, as the
reference agent does it (including its legacy-resolver switch for the pip versions it names). uv, when
present, only puts pip itself into the venv (faster than ensurepip); pip installs the requirements."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from conveyor.env.managers.base import (
    BuildSpec,
    Log,
    config_list,
    find_uv,
    installer_env,
    run_streamed,
    venv_python,
    write_requirements,
)
from conveyor.env.managers.uv import INSTALL_HINT, uv_env

_PIP_LINE = re.compile(r"^pip\s*(?:[<>=!~;\[]|$)", re.IGNORECASE)  # a requirement on pip itself
_SPEC = re.compile(r"^\s*(~=|==|!=|<=|>=|<|>)\s*([0-9][0-9a-zA-Z.*+-]*)\s*$")
_DIST_INFO = re.compile(r"^pip-(.+)\.dist-info$")
_SUCCESS = "Successfully installed "


def pip_env(spec: BuildSpec) -> dict[str, str]:
    extra = {"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}
    urls = config_list(spec.cfg, "agent.package_manager.extra_index_url")
    if urls:  # through the environment, so that credentials in them stay out of the process list
        extra["PIP_EXTRA_INDEX_URL"] = " ".join(filter(None, [os.environ.get("PIP_EXTRA_INDEX_URL", ""), *urls]))
    return installer_env(extra)


def pip_pins(spec: BuildSpec) -> list[str]:
    """The requirement lines pip itself is installed with: the task's own pip line wins over the setting;
    the setting's entries are constraints with markers ("<22.3 ; python_version >= '3.10'"), which pip
    evaluates itself; "" means no pin (upgrade to the newest)."""
    own = [line for line in spec.lines if _PIP_LINE.match(line)]
    if own:
        return own
    value = spec.cfg.get("agent.package_manager.pip_version")
    pins = [value] if isinstance(value, str) else list(value or [])
    return [f"pip{pin.strip()}" if pin.strip() else "pip" for pin in pins] or ["pip"]


def version_matches(version: str, spec: str) -> bool:
    """Whether `version` satisfies a comma-separated specifier like ">=20.3,<24.3" (numeric releases only,
    enough for pip's own versions; no dependency on `packaging` in the agent)."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = _SPEC.match(clause)
        if not m:
            return False
        op, want_text = m.groups()
        if want_text.endswith(".*"):  # ==1.2.* : compare the named part only
            want = _release(want_text[:-2])
            if (have[:len(want)] == want) != (op == "=="):
                return False
            continue
        want = _release(want_text)
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        ok = {"==": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b,
              "~=": a >= b and a[:len(want) - 1] == b[:len(want) - 1]}[op]
        if not ok:
            return False
    return True


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:4]) or (0,)


class PipManager:
    name = "pip"
    installs_project = False

    def key_options(self, spec: BuildSpec) -> dict:
        return {"pip": pip_pins(spec), "flags": config_list(spec.cfg, "agent.package_manager.extra_pip_install_flags")}

    def create(self, spec: BuildSpec, path: Path, log: Log) -> Path:
        uv = find_uv()
        cmd = [str(spec.base_python), "-m", "venv", *(["--without-pip"] if uv else [])]
        if spec.cfg.get("agent.package_manager.system_site_packages"):
            cmd.append("--system-site-packages")
        run_streamed([*cmd, str(path)], log=log, what="Could not create the venv with python -m venv",
                     env=installer_env(), cwd=path.parent,
                     hint="Check that the interpreter has the venv module (Debian: apt install python3-venv)")
        python = venv_python(path)
        self._install_pip(spec, python, uv, log)
        return python

    @staticmethod
    def _install_pip(spec: BuildSpec, python: Path, uv: str | None, log: Log) -> None:
        """pip itself, at the version agent.package_manager.pip_version asks for. With uv this takes 0.1 s
        from its cache where ensurepip + an upgrade take 5 s; uv evaluates the pins' markers as pip would."""
        what, hint = "Could not install pip into the venv", "Check agent.package_manager.pip_version"
        if uv is None:
            run_streamed([str(python), "-m", "pip", "install", "--upgrade", *pip_pins(spec)], log=log,
                         env=pip_env(spec), what=what, hint=hint)
            return
        for pins in (pip_pins(spec), ["pip"]):  # no pin matched this python: the newest pip, as pip would keep
            run_streamed([uv, "pip", "install", "--python", str(python), *pins], log=log, env=uv_env(spec),
                         what=what, hint=hint)
            if any(python.parent.parent.glob("lib/python*/site-packages/pip/__init__.py")):
                return

    def install(self, spec: BuildSpec, python: Path, log: Log) -> int:
        env = pip_env(spec)
        lines = [line for line in spec.lines if not _PIP_LINE.match(line)]
        if not lines:
            return 0
        with tempfile.TemporaryDirectory(prefix="conveyor-req-") as tmp:
            req = write_requirements(lines, Path(tmp), spec.base_dir)
            cmd = [str(python), "-m", "pip", "install", "-r", str(req), *self._flags(spec, python)]
            out = run_streamed(cmd, log=log, env=env, cwd=spec.base_dir or Path(tmp),
                               what="Could not install requirements", hint=INSTALL_HINT)
        return _count_installed(out)

    def _flags(self, spec: BuildSpec, python: Path) -> list[str]:
        flags = config_list(spec.cfg, "agent.package_manager.extra_pip_install_flags")
        if spec.cfg.get("agent.package_manager.force_upgrade"):
            flags.append("--upgrade")
        legacy = config_list(spec.cfg, "agent.package_manager.pip_legacy_resolver")
        version = _pip_version(python)
        if version and any(version_matches(version, s) for s in legacy):
            flags.append("--use-deprecated=legacy-resolver")
        return flags


def _pip_version(python: Path) -> str | None:
    """The venv's pip version, from its dist-info folder (running `pip --version` costs half a second)."""
    for dist in python.parent.parent.glob("lib/python*/site-packages/pip-*.dist-info"):
        m = _DIST_INFO.match(dist.name)
        if m:
            return m.group(1)
    return None


def _count_installed(lines: list[str]) -> int:
    for line in reversed(lines):
        if line.startswith(_SUCCESS):
            return len(line[len(_SUCCESS):].split())
    return 0
