"""deploy/systemd: the units load in systemd as written (`systemd-analyze verify`, which works offline on unit files),
and they say what an operator relies on: restart on failure, a stop that drains the agent instead of killing its
tasks, settings from an EnvironmentFile, a dedicated user."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
INSTALLED = "/opt/conveyor/bin/conveyor"  # where the README installs Conveyor; verify needs ExecStart to exist
CONVEYOR = Path(sys.executable).parent / "conveyor"



@pytest.fixture(autouse=True)
def _systemd_analyze() -> None:
    """Skip here without it, fail in CI (which must install it), like every engine a test needs."""
    if shutil.which("systemd-analyze") is None:
        from conftest import unavailable

        unavailable("systemd-analyze is missing (apt-get install systemd)", ".ci/run must apt-install systemd")


def _settings(unit: str) -> dict[str, list[str]]:
    """Key → its values (a key may repeat), comments dropped."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _duration_sec(value: str) -> float:
    units = {"s": 1, "min": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u or "s"] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*(min|h|d|s)?", value))


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert CONVEYOR.is_file(), "the test venv has no conveyor script"
    names = sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))
    assert {"conveyor-server.service", "conveyor-agent.service", "conveyor-gc.service",
            "conveyor-gc.timer"} <= set(names)
    for name in names:  # the same units, with ExecStart pointing at this checkout's conveyor
        text = (UNITS / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED, str(CONVEYOR)), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a misspelt setting is reported."""
    text = (UNITS / "conveyor-server.service").read_text(encoding="utf-8").replace(INSTALLED, str(CONVEYOR))
    (tmp_path / "conveyor-server.service").write_text(text.replace("Restart=", "Restrat="), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "conveyor-server.service")],
                          capture_output=True, text=True, timeout=60)
    assert "Restrat" in done.stdout + done.stderr


def test_the_agent_drains_on_stop_and_restarts_on_failure() -> None:
    agent = _settings("conveyor-agent.service")
    # SIGTERM to the daemon alone: it stops pulling and waits for its tasks (agent/daemon.py); the default
    # KillMode=control-group would send it to the tasks as well, killing them at once
    assert agent["KillMode"] == ["mixed"] and agent.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    assert _duration_sec(agent["TimeoutStopSec"][0]) >= 3600, "the drain needs time for running tasks to end"
    assert agent["Restart"] == ["on-failure"]
    assert "--foreground" in agent["ExecStart"][0]  # systemd supervises the process it started
    assert "NoNewPrivileges" not in agent and "PrivateTmp" not in agent and "PrivateDevices" not in agent, \
        "hardening that breaks tasks (sudo, rootless podman, container mounts under /tmp, GPUs)"


def test_services_run_as_their_own_user_with_settings_from_a_file() -> None:
    for unit, user in (("conveyor-server.service", "conveyor"), ("conveyor-agent.service", "conveyor-agent")):
        settings = _settings(unit)
        assert settings["User"] == [user], unit
        assert settings["EnvironmentFile"], unit
        assert settings["ExecStart"][0].startswith(INSTALLED), unit
    server = _settings("conveyor-server.service")
    assert server["Restart"] == ["on-failure"] and server["ProtectSystem"] == ["strict"]
    example = (UNITS / "server.env.example").read_text(encoding="utf-8")
    assert "CONVEYOR__SERVER__DB=" in example  # a config key as a variable: config/loader.py's CONVEYOR__ overlay


def test_the_server_unit_starts_a_server_with_its_settings_from_the_environment_file(tmp_path: Path) -> None:
    """The unit's command and variables as systemd would pass them (state folder and port moved for the test): the
    server listens where server.env says and keeps its database in the unit's state folder."""
    from conftest import free_port

    state = tmp_path / "var-lib-conveyor"
    unit = _settings("conveyor-server.service")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "CONVEYOR_"))}
    for assignment in unit["Environment"]:
        key, value = assignment.strip('"').split("=", 1)
        env[key] = value.replace("/var/lib/conveyor", str(state))
    port = free_port()
    example = (UNITS / "server.env.example").read_text(encoding="utf-8").splitlines()
    settings = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    assert settings["CONVEYOR__SERVER__HOST"] and settings["CONVEYOR__SERVER__PORT"]
    env.update(settings, CONVEYOR__SERVER__HOST="127.0.0.1", CONVEYOR__SERVER__PORT=str(port),
               CONVEYOR__SERVER__DB="")  # SQLite in the state folder: the example's PostgreSQL host is not here
    argv = unit["ExecStart"][0].replace(INSTALLED, str(CONVEYOR)).replace("/var/lib/conveyor", str(state)).split()
    state.mkdir(mode=0o700)  # StateDirectory=
    server = subprocess.Popen(argv, env=env, cwd=state, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/debug.ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"the server did not come up:\n{server.communicate(timeout=10)[0]}")
        assert (state / "conveyor.db").is_file() and (state / "clearml.conf").is_file()  # first-start credentials
    finally:
        server.terminate()  # KillSignal=SIGTERM: it must end well within TimeoutStopSec, and cleanly for systemd
        # (uvicorn re-raises the signal once shut down; systemd counts an exit by SIGTERM as a success)
        assert server.wait(timeout=_duration_sec(unit["TimeoutStopSec"][0])) in (0, -signal.SIGTERM)
