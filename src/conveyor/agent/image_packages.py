"""What a task's image lacks, found and installed at container start with the image's own package manager, as the
reference's init script does (clearml-agent.md §5.2): a Python 3 for the task (3.8 or newer; the image's own is
used when it has one) and, with agent.docker_install_opencv_libs, the libraries opencv loads. git is not among them:
Conveyor brings its own (runtimes/bundle.py).

Runs inside the container, from Conveyor's bundle; the checks read the package databases directly, so that an image
that has everything starts without running anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.errors import TaskFailure
from conveyor.progress import Log

MIN_PYTHON = (3, 8)  # the oldest Python uv builds environments for
MANAGERS = ("apt-get", "apk", "dnf", "microdnf", "yum")  # in this order of preference
PYTHON = {"apt-get": ["python3"], "apk": ["python3"], "dnf": ["python3"], "microdnf": ["python3"], "yum": ["python3"]}
PIP = {"apt-get": ["python3-pip", "python3-venv"], "apk": ["py3-pip"], "dnf": ["python3-pip"],
       "microdnf": ["python3-pip"], "yum": ["python3-pip"]}  # only for agent.package_manager.type pip
# uv inspects a Python before 3.10 with distutils, which Debian and Ubuntu ship apart
DISTUTILS = {"apt-get": ["python3-distutils"]}
_RPM_OPENCV = ["libSM", "libXext", "libXrender-devel", "glib2"]
OPENCV = {"apt-get": ["libsm6", "libxext6", "libxrender-dev", "libglib2.0-0"],
          "apk": ["libsm", "libxext", "libxrender-dev", "glib"],
          "dnf": _RPM_OPENCV, "microdnf": _RPM_OPENCV, "yum": _RPM_OPENCV}
_VERSIONED = re.compile(r"^python(3\.\d+)$")

class ImageEnvError(TaskFailure):
    """The image's Python environment could not be made: it lacks something that could not be installed. One line,
    for the task's status reason."""


@dataclass(frozen=True)
class ImagePython:
    path: str
    version: str  # major.minor.micro
    distutils: bool = True

    @property
    def lacks_distutils(self) -> bool:
        return not self.distutils and tuple(map(int, self.version.split(".")[:2])) < (3, 10)


@dataclass
class Plan:
    manager: str | None
    packages: list[str] = field(default_factory=list)
    python: ImagePython | None = None


def plan(search_path: str, *, opencv: bool, pip: bool) -> Plan:
    """What to install: nothing when the image has a usable Python and (with `opencv`) the opencv libraries."""
    manager = next((m for m in MANAGERS if shutil.which(m, path=search_path)), None)
    python = find_python(search_path)
    packages: list[str] = []
    if manager is None:
        if python is None:
            raise ImageEnvError("the image has no Python 3.8 or newer (python3) and no package manager to install one "
                               f"({', '.join(MANAGERS)}): use an image with python3")
        return Plan(None, [], python)  # nothing can be installed: the opencv libraries are left as they are
    if python is None:
        packages += PYTHON[manager] + (PIP[manager] if pip else [])
    elif python.lacks_distutils:
        packages += DISTUTILS.get(manager, [])
    if opencv:
        packages += missing(manager, OPENCV[manager])
    return Plan(manager, packages, python)


def find_python(search_path: str) -> ImagePython | None:
    """The image's interpreter for tasks: an activated venv's ($VIRTUAL_ENV), else the newest python3.X (3.8 or newer)
    on PATH, else python3; checked by running it."""
    venv = os.environ.get("VIRTUAL_ENV")
    candidates: list[tuple[tuple[int, ...], str]] = []
    if venv and os.access(f"{venv}/bin/python", os.X_OK):
        candidates.append(((99,), f"{venv}/bin/python"))
    for folder in search_path.split(os.pathsep):
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            m = _VERSIONED.match(name)
            if m and os.access(os.path.join(folder, name), os.X_OK):
                candidates.append((tuple(map(int, m.group(1).split("."))), os.path.join(folder, name)))
    plain = shutil.which("python3", path=search_path)
    if plain:
        candidates.append(((0,), plain))
    seen: set[str] = set()
    for _, path in sorted(candidates, key=lambda c: c[0], reverse=True):
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        found = _probe(path)
        if found and tuple(map(int, found.version.split(".")[:2])) >= MIN_PYTHON:
            return found
    return None


_PROBE = ("import sys, importlib.util as u; print('%d.%d.%d' % sys.version_info[:3], "
          "int(sys.version_info >= (3, 12) or u.find_spec('distutils.sysconfig') is not None))")


def _probe(python: str) -> ImagePython | None:
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.fullmatch(r"(\d+\.\d+\.\d+) ([01])", out.stdout.strip())
    return ImagePython(python, m.group(1), m.group(2) == "1") if out.returncode == 0 and m else None


def missing(manager: str, packages: Sequence[str]) -> list[str]:
    """`packages` that the image's package database does not list as installed."""
    if manager == "apt-get":
        have = set(_dpkg_installed(Path("/var/lib/dpkg/status")))
    elif manager == "apk":
        have = set(_apk_installed(Path("/lib/apk/db/installed")))
    else:
        try:
            out = subprocess.run(["rpm", "-q", "--qf", "%{NAME}\n", *packages], capture_output=True, text=True,
                                 timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return list(packages)
        have = {line.strip() for line in out.stdout.splitlines() if " " not in line.strip()}
    return [p for p in packages if p not in have]


def _dpkg_installed(status: Path) -> Iterator[str]:
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status", "").endswith(" installed"):
            yield fields.get("Package", "")
            for provided in fields.get("Provides", "").split(","):  # libglib2.0-0t64 provides libglib2.0-0
                yield provided.strip().split(" ")[0]


def _apk_installed(db: Path) -> Iterator[str]:
    try:
        text = db.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith("P:"):
            yield line[2:]


def install(manager: str, packages: Sequence[str], out: Log, *, update: bool = True) -> None:
    """Install `packages` with `manager` (after refreshing its index: `update`), its output line by line to `out`.
    Raises ImageEnvError."""
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise ImageEnvError(f"the image runs as a non-root user and lacks {' '.join(packages)}: install them in "
                               "the image, or run it as root")
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps: list[list[str]] = {
        "apt-get": [*([["apt-get", "update", "-q"]] if update else []),
                    # the downloaded packages stay in the agent's apt cache (mounted), for the next container
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0",
                     "-o", "APT::Keep-Downloaded-Packages=true", *packages]],
        "apk": [["apk", "add", "--no-progress", *packages]],
    }.get(manager, [[manager, "install", "-y", *packages]])
    for argv in steps:
        out(f"conveyor: {' '.join(argv)}")
        try:
            proc = subprocess.Popen([*sudo, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ImageEnvError(f"could not run {argv[0]}: {exc.strerror}") from None
        last = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            out(line.rstrip("\n"))
            last = line.strip() or last
        if proc.wait() != 0:
            what = " ".join(argv[:2]) + ("" if argv[1] == "update" else " " + " ".join(packages))
            raise ImageEnvError(f"`{what}` failed with exit code {proc.returncode}: {last or 'no output'}")
