"""Conveyor inside any image with a Python 3, without the container reaching a package index.

Per image (by image id) and Conveyor build (version + a digest of the package's files), one folder on the host,
made once under a file lock and mounted read-only at CONTAINER_DIR in every container of that image:

    <root>/<key>/venv      a venv made *in* the image (`python3 -m venv --without-pip`, so it points at the
                           image's interpreter), filled *on the host*: the agent-side dependencies with
                           `uv pip install --target` for the image's Python version and platform (from PyPI, which
                           the host reaches, through the host's uv cache; pinned to the host's versions), and the
                           running Conveyor's own package files, copied as they are (an editable install works)
    <root>/<key>/READY     written last: the folder is complete (what was probed, as JSON)

A second short container run byte-compiles the venv (the mount is read-only later) and checks that Conveyor
imports and uv runs there. The first task of an image pays this (a few seconds); later ones start at once.
Server-only dependencies are left out: `conveyor execute` does not import them.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conveyor

CONTAINER_DIR = "/opt/conveyor"  # where the prepared folder is mounted in containers
CONTAINER_PYTHON = f"{CONTAINER_DIR}/venv/bin/python"
READY = "READY"
FORMAT = 1  # bump when the folder's layout changes, so that old folders stop matching
MIN_PYTHON = (3, 10)  # pyproject's requires-python
SERVER_ONLY = {"starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg"}  # not imported by `conveyor execute`
PREPARE_TIMEOUT_SEC = 900  # a wait for another process's preparation of the same folder
UNUSED_DAYS = 14  # a folder no container started from for this long is removed (each Conveyor upgrade makes one)
_TOUCH_EVERY_SEC = 3600  # READY's mtime is the last use, refreshed at most this often
RUN_TIMEOUT_SEC = 300  # one preparation step (container run, uv install)
_UV_MANYLINUX = (40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 28, 17)  # glibc minors uv has a target name for
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

RunInImage = Callable[[Path, list[str]], "subprocess.CompletedProcess[str]"]
Log = Callable[[str], None]

# Run in the image by its own python3: make the venv (by hand when the venv module is missing), then describe it.
_PROBE = r"""
import json, os, platform, subprocess, sys, glob
venv = sys.argv[1]
try:
    import venv as _venv
    _venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(venv)
except Exception:
    exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    v = "%d.%d" % sys.version_info[:2]
    os.makedirs(os.path.join(venv, "bin"), exist_ok=True)
    os.makedirs(os.path.join(venv, "lib", "python" + v, "site-packages"), exist_ok=True)
    with open(os.path.join(venv, "pyvenv.cfg"), "w") as f:
        f.write("home = %s\ninclude-system-site-packages = false\nversion = %s\n"
                % (os.path.dirname(exe), "%d.%d.%d" % sys.version_info[:3]))
    for name in ("python", "python3", "python" + v):
        if not os.path.lexists(os.path.join(venv, "bin", name)):
            os.symlink(exe, os.path.join(venv, "bin", name))
info = json.loads(subprocess.check_output([os.path.join(venv, "bin", "python"), "-c",
    "import json, sys, sysconfig; print(json.dumps({'purelib': sysconfig.get_path('purelib'),"
    " 'platlib': sysconfig.get_path('platlib'), 'prefix': sys.prefix}))"]))
libc, libc_version = platform.libc_ver()
info.update(python="%d.%d" % sys.version_info[:2], python_full=platform.python_version(),
            implementation=sys.implementation.name, machine=platform.machine(), libc=libc or "",
            libc_version=libc_version or "", musl=bool(glob.glob("/lib/ld-musl-*")), executable=sys.executable)
print("CONVEYOR-PROBE " + json.dumps(info))
"""

# Run in the image with the filled venv: byte-compile it, then prove that Conveyor's agent side and uv work.
_CHECK = r"""
import compileall, subprocess, sys
compileall.compile_dir(sys.argv[1], quiet=2, workers=0)
import conveyor.cli.main, conveyor.agent.executor, conveyor.env.python, conveyor.env.vcs
conveyor.cli.main.build_parser()
from uv import find_uv_bin
subprocess.run([find_uv_bin(), "--version"], check=True, stdout=subprocess.DEVNULL)
print("CONVEYOR-CHECK ok " + conveyor.__version__)
"""


class ImageEnvError(Exception):
    """Conveyor could not be put into the image; the message says why (one line) and what to do."""


@dataclass(frozen=True)
class ImageEnv:
    """A prepared folder: mount `host_dir` at `container_dir` (read-only) and run `conveyor_argv(...)`."""

    host_dir: Path
    container_dir: str = CONTAINER_DIR
    python: str = CONTAINER_PYTHON

    def conveyor_argv(self, *args: str) -> list[str]:
        return [self.python, "-u", "-m", "conveyor", *args]

    def mount(self) -> list[str]:
        return ["-v", f"{self.host_dir}:{self.container_dir}:ro"]


# -- what goes in ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def package_source() -> tuple[Path, str]:
    """The running Conveyor's package folder and a digest of its files (an editable install changes without
    changing its version, so the version alone cannot key the folder)."""
    root = Path(conveyor.__file__).resolve().parent
    digest = hashlib.sha256(conveyor.__version__.encode())
    for path in sorted(_package_files(root)):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return root, digest.hexdigest()


def _package_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


@functools.lru_cache(maxsize=1)
def agent_requirements() -> tuple[list[str], list[str]]:
    """(requirements, constraints): Conveyor's declared dependencies without the server-only ones, and the host's
    installed version of each of them and of their own dependencies, so that the container runs what the agent
    runs."""
    declared = _declared_requirements()
    wanted = [line for line in declared if _name(line) not in SERVER_ONLY]
    pins: dict[str, str] = {}
    todo = [_name(line) for line in wanted]
    while todo:
        name = todo.pop()
        if name in pins:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        pins[name] = dist.version
        todo += [_name(r) for r in dist.requires or [] if "extra ==" not in r and _name(r) not in pins]
    return wanted, [f"{name}=={version}" for name, version in sorted(pins.items())]


def _declared_requirements() -> list[str]:
    # A source checkout's pyproject.toml is the truth (an editable install's metadata may be older than it).
    pyproject = Path(conveyor.__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib

            project = tomllib.loads(pyproject.read_text())["project"]
            if project.get("name") == "conveyor":
                return list(project.get("dependencies") or [])
        except (ImportError, KeyError, ValueError):
            pass
    return [r for r in metadata.requires("conveyor") or [] if "extra ==" not in r]


def _name(requirement: str) -> str:
    m = _REQ_NAME.match(requirement)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else requirement


def folder_key(image_id: str) -> str:
    _, digest = package_source()
    requirements, constraints = agent_requirements()
    blob = json.dumps([FORMAT, image_id, conveyor.__version__, digest, requirements, constraints])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# -- making it ------------------------------------------------------------------------------------------------

def prepare(image: str, image_id: str, root: Path, run_in_image: RunInImage, *, uv: str | None,
            uv_env: dict[str, str], log: Log) -> ImageEnv:
    """The image's folder under `root`, made now if missing. `run_in_image(host_dir, argv)` runs argv in the image
    with host_dir mounted read-write at CONTAINER_DIR and returns the finished process (output captured)."""
    final = root / folder_key(image_id)
    if _touch(final / READY):
        return ImageEnv(final)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".locks" / f"{final.name}.lock"):
        if (final / READY).is_file():
            return ImageEnv(final)
        started = time.monotonic()
        log(f"conveyor: preparing Conveyor {conveyor.__version__} for image {image} (once per image and build)")
        staging = root / f".{final.name}.{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            info = _probe(image, staging, run_in_image)
            site = staging / Path(info["purelib"]).relative_to(CONTAINER_DIR)
            _install_dependencies(info, site, uv, uv_env)
            _copy_conveyor(site)
            out = run_in_image(staging, [CONTAINER_PYTHON, "-c", _CHECK, info["purelib"]])
            if "CONVEYOR-CHECK ok" not in out.stdout:
                raise ImageEnvError(f"Conveyor does not run in image {image}: {_tail(out)}")
            (staging / READY).write_text(json.dumps(info, indent=1) + "\n")
            shutil.rmtree(final, ignore_errors=True)  # an incomplete one (READY removed by hand)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"conveyor: Conveyor ready for image {image} in {time.monotonic() - started:.1f} s ({final})")
    _prune(root, keep=final.name)
    return ImageEnv(final)


def _touch(ready: Path) -> bool:
    try:
        if time.time() - ready.stat().st_mtime > _TOUCH_EVERY_SEC:
            os.utime(ready)
        return True
    except OSError:
        return False


def _prune(root: Path, keep: str) -> None:
    """Remove folders unused for UNUSED_DAYS, and what interrupted preparations left (under their lock)."""
    now = time.time()
    for entry in root.iterdir():
        name = entry.name.lstrip(".").split(".")[0]
        if entry.name in (keep, ".locks", "config-cache") or not re.fullmatch(r"[0-9a-f]{32}", name):
            continue
        marker = entry / READY if not entry.name.startswith(".") else entry
        try:
            age = now - marker.stat().st_mtime
        except OSError:
            age = now - entry.stat().st_mtime
        if age < (UNUSED_DAYS * 86400 if marker.name == READY else 3600):
            continue
        try:
            with _locked(root / ".locks" / f"{name}.lock", wait=0):
                shutil.rmtree(entry, ignore_errors=True)
        except ImageEnvError:
            continue  # being prepared right now


def _probe(image: str, staging: Path, run_in_image: RunInImage) -> dict[str, Any]:
    out = run_in_image(staging, ["python3", "-c", _PROBE, f"{CONTAINER_DIR}/venv"])
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("CONVEYOR-PROBE ")), None)
    if out.returncode != 0 or line is None:
        raise ImageEnvError(f"image {image} has no usable python3 (Conveyor needs Python 3 and git in the image): "
                            f"{_tail(out)}")
    info = json.loads(line.split(" ", 1)[1])
    if info["implementation"] != "cpython":
        raise ImageEnvError(f"image {image} has {info['implementation']}, Conveyor needs CPython")
    if tuple(map(int, info["python"].split("."))) < MIN_PYTHON:
        raise ImageEnvError(f"image {image} has Python {info['python_full']}; Conveyor needs Python "
                            f"{'.'.join(map(str, MIN_PYTHON))} or newer (as python3) in the image")
    return info


def uv_platform(info: dict[str, Any]) -> str:
    """uv's --python-platform for the image: the newest manylinux uv names that the image's glibc satisfies."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(info["machine"], info["machine"])
    if machine not in ("x86_64", "aarch64"):
        raise ImageEnvError(f"images for {info['machine']} are not supported (x86_64 and aarch64 are)")
    if info.get("musl") and info.get("libc") != "glibc":
        return f"{machine}-unknown-linux-musl"
    try:
        minor = int(str(info.get("libc_version") or "2.17").split(".")[1])
    except (IndexError, ValueError):
        minor = 17
    return f"{machine}-manylinux_2_{next((m for m in _UV_MANYLINUX if m <= minor), 17)}"


def _install_dependencies(info: dict[str, Any], site: Path, uv: str | None, env: dict[str, str]) -> None:
    if uv is None:
        raise ImageEnvError("uv is not installed on the agent: it fetches Conveyor's dependencies for containers")
    requirements, constraints = agent_requirements()
    site.mkdir(parents=True, exist_ok=True)
    pins = site.parent / "conveyor-constraints.txt"
    pins.write_text("\n".join(constraints) + "\n")
    base = [uv, "pip", "install", "--quiet", "--target", str(site), "--python-version", info["python"],
            "--python-platform", uv_platform(info), "--only-binary", ":all:", *requirements]
    out = _run([*base, "--constraint", str(pins)], env)
    if out.returncode != 0:  # the host's versions may not exist for the image's Python: take the declared ranges
        out = _run(base, env)
    pins.unlink()
    if out.returncode != 0:
        raise ImageEnvError(f"could not fetch Conveyor's dependencies for Python {info['python']} "
                            f"({uv_platform(info)}): {_tail(out)}")
    for script in (site / "bin").glob("*"):  # console scripts name the host's python; only uv's binary is used
        if script.name not in ("uv", "uvx"):
            script.unlink()


def _copy_conveyor(site: Path) -> None:
    root, digest = package_source()
    shutil.copytree(root, site / "conveyor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = site / f"conveyor-{conveyor.__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: conveyor\nVersion: {conveyor.__version__}\n")
    (info / "INSTALLER").write_text("conveyor-agent\n")
    (info / "conveyor_build.json").write_text(json.dumps({"source": str(root), "digest": digest}) + "\n")


def _run(argv: list[str], env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SEC,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} took more than {RUN_TIMEOUT_SEC} s")


def _tail(out: "subprocess.CompletedProcess[str]", lines: int = 3) -> str:
    text = [ln.strip() for ln in (out.stderr or out.stdout or "").splitlines() if ln.strip()]
    return "; ".join(text[-lines:]) or f"exit code {out.returncode}"


class _locked:
    """An exclusive flock on `path`, waited for up to PREPARE_TIMEOUT_SEC (another agent preparing the same)."""

    def __init__(self, path: Path, wait: float = PREPARE_TIMEOUT_SEC):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.wait = wait
        self.handle = open(path, "a+")  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.handle.close()
                    raise ImageEnvError(f"another agent has been preparing {self.path.stem} for over "
                                        f"{self.wait:g} s; remove {self.path} if none runs") from None
                time.sleep(0.2)

    def __exit__(self, *_exc: object) -> None:
        self.handle.close()


__all__ = ["CONTAINER_DIR", "CONTAINER_PYTHON", "ImageEnv", "ImageEnvError", "agent_requirements", "folder_key",
           "package_source", "prepare", "uv_platform"]
