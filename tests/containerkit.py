"""Helpers for container tests: a usable engine (docker or podman) and the local base image, built once per session.

Without a working engine the tests skip here, and fail under CI (`.ci/run` installs and starts both engines).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("CONVEYOR_TEST_BASE_IMAGE", "conveyor/base:bookworm")  # what .ci/run builds
ENGINES = ("docker", "podman")
# Conveyor's venv per image is kept across tests (as on a worker): only the first test of a session prepares it
IMAGE_ENVS = os.environ.get("CONVEYOR_TEST_IMAGE_ENVS", "/tmp/conveyor-test-image-envs")


def _ok(*argv: str, timeout: float = 30) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unavailable(reason: str) -> None:
    unavailable(reason)


def _start_dockerd() -> None:
    """As .ci/run does: start dockerd when `docker info` fails (it outlives the session, as in CI)."""
    if _ok("docker", "info"):
        return
    if not shutil.which("dockerd"):
        _unavailable("docker is not installed (apt-get install docker.io)")
    log = open("/tmp/conveyor-test-dockerd.log", "ab")  # noqa: SIM115
    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True)
    deadline = time.time() + 30
    while not _ok("docker", "info"):
        if time.time() > deadline:
            _unavailable("dockerd did not start within 30 s (see /tmp/conveyor-test-dockerd.log)")
        time.sleep(0.3)


def ensure_base_image(engine: str, image: str = BASE_IMAGE) -> str:
    """The local base image (Python 3 + git), built with .ci/images/build-base-image.sh when `engine` lacks it."""
    if not _ok(engine, "image", "inspect", image):
        out = subprocess.run([str(ROOT / ".ci/images/build-base-image.sh"), engine, image], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, f"building {image} with {engine} failed:\n{out.stdout}\n{out.stderr}"
    return image


_ready: set[str] = set()


def ready_engine(name: str) -> str:
    """A working engine with the base image; skips (fails under CI) when it cannot be had."""
    if name not in _ready:
        if name == "docker":
            _start_dockerd()
        elif not shutil.which("podman"):
            _unavailable("podman is not installed (apt-get install podman)")
        elif not _ok("podman", "info"):
            _unavailable("podman does not work here (podman info failed)")
        ensure_base_image(name)
        _ready.add(name)
    return name


# Stock Debian images as users have them, from .ci/images/build-debian-images.sh (debootstrap; .ci/run builds them)
BULLSEYE_IMAGE = "conveyor/debian:bullseye-python"  # Python 3.9, no git
BOOKWORM_BARE_IMAGE = "conveyor/debian:bookworm-bare"  # no Python, no git


def stock_image(engine: str, image: str) -> str:
    """`image` of `engine`; skips (fails under CI) when it is missing: building it takes a minute and the mirror."""
    if not _ok(engine, "image", "inspect", image):
        _unavailable(f"{engine} lacks the image {image} (.ci/images/build-debian-images.sh {engine} builds it)")
    return image


def container_agent_env(env: dict[str, str]) -> dict[str, str]:
    """An agent environment (agentkit.agent_env) whose container runs share the prepared per-image venvs."""
    return {**env, "CLEARML_AGENT__AGENT__DOCKER_CONVEYOR_ENV_DIR": IMAGE_ENVS}


def remove_image(engine: str, image: str) -> None:
    subprocess.run([engine, "rmi", "-f", image], capture_output=True)


def containers_labelled(engine: str, label: str) -> list[str]:
    out = subprocess.run([engine, "ps", "-a", "-q", "--filter", f"label={label}"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """docker, then podman: a test using this runs on both engines."""
    return ready_engine(request.param)


@pytest.fixture
def docker_engine() -> str:
    return ready_engine("docker")


@pytest.fixture
def base_image(engine: str) -> str:
    return BASE_IMAGE
