"""A task's Python environment: which requirements, which interpreter, which package manager, and the venv
cache in front of them (ARCHITECTURE decision 4: uv by default; key of Python version, manager and the
sorted requirement lines).

Use::

    reqs = resolve_requirements(task["script"].get("requirements"), repo_dir)
    with build_environment(reqs, cfg=cfg, python_version=task["script"].get("binary"), work_dir=repo_dir,
                           log=task_log) as env:
        tasks.set_requirements(..., {"pip": "\\n".join(freeze(env))})
        run([str(env.python), entry_point, ...])

The environment is in use while the `with` block runs (or until `env.release()`): a cached venv is shared
in place by every task with the same key and is never evicted while a task holds it. A cached venv is
shared, so a task must not install packages into it at run time.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.config import Config
from conveyor.env.cache import CacheUnavailable, FileLock, Lease, VenvCache
from conveyor.env.managers import get_manager, uv_sync
from conveyor.env.managers.base import (
    BuildSpec,
    EnvBuildError,
    Manager,
    Timer,
    config_list,
    find_uv,
    installer_env,
    scrub,
    venv_python,
)
from conveyor.env.managers.conda import require_conda
from conveyor.env.managers.pip import PipManager
from conveyor.env.managers.poetry import unusable_reason as poetry_unusable_reason
from conveyor.env.requirements import editable_versions, localize, requested_python
from conveyor.progress import Log

logger = logging.getLogger(__name__)  # where progress goes when a caller passes no `log`

__all__ = ["EnvBuildError", "PythonEnv", "Requirements", "agent_python", "build_environment",
           "build_environment_at", "environment_key",
           "find_python", "freeze", "normalize_line", "parse_requirement_lines", "resolve_requirements",
           "select_python"]

FREEZE_FILE = ".conveyor-freeze.txt"  # what freeze() found in a cached venv: it does not change
KEY_FORMAT = 1  # bump when what goes into the key changes, so that old entries stop matching
PROBE_TIMEOUT_SEC = 10  # an interpreter that cannot print its version in this time is broken
FREEZE_TIMEOUT_SEC = 120
UNCACHED_SLOTS = 64  # venvs_dir/<py>, <py>.1, …: one per task building uncached at the same time

_CONTINUATION = re.compile(r"\\\r?\n")
_COMMENT = re.compile(r"(?:^|\s)#.*$")  # pip's rule: '#' starts a comment at a line start or after whitespace
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
# lines whose content is not in their text: files and folders, editable and VCS checkouts
_EXTERNAL = re.compile(r"^(?:-e\b|--editable\b|-r\b|--requirement\b|-c\b|--constraint\b|\.|/|~|file:)"
                       r"|(?:^|[\s@])(?:git|hg|svn|bzr)\+|@\s*file:", re.IGNORECASE)
_VERSION_IN = re.compile(r"(\d+(?:\.\d+){0,2})$")
_NOT_IN_FREEZE = {"clearml-agent"}  # as the reference: the agent is not the task's requirement


@dataclass
class Requirements:
    lines: list[str]  # pip requirement lines, comments and blank lines removed, in their original order
    source: str  # "task" | "repository requirements.txt" | "none"
    conda: list[str] = field(default_factory=list)  # the task's conda lines (conda manager only)
    base_dir: Path | None = None  # where relative paths in the lines resolve: the repository
    python: str | None = None  # "3.11": the version the SDK recorded the run with ("# Python 3.11.7 ..." header)


@dataclass
class PythonEnv:
    """A built environment. Use it as a context manager, or call `release()` when the task has ended:
    until then a cached venv is marked in use and never evicted."""
    path: Path
    python: Path
    manager: str
    cached: bool  # True when it lives in the venv cache (hit or freshly added)
    key: str | None  # the cache key; None when built outside the cache
    python_version: str = ""  # major.minor.micro of the interpreter
    hit: bool = False  # True when it came from the cache without building
    _lease: Lease | FileLock | None = field(default=None, repr=False, compare=False)  # released with the env

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> PythonEnv:  # noqa: PYI034 - a dataclass, not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- requirements ----------------------------------------------------------------------------------------

def parse_requirement_lines(value: str | list[str] | None) -> list[str]:
    """Requirement lines from requirements-file text (or a list of lines): comments (the SDK's
    "# Python 3.11.7 ..." header included), blank lines and duplicates dropped, continuations joined."""
    if not value:
        return []
    text = value if isinstance(value, str) else "\n".join(str(v) for v in value)
    lines: list[str] = []
    for raw in _CONTINUATION.sub(" ", text).splitlines():
        line = _COMMENT.sub("", raw).strip()
        if line and line not in lines:
            lines.append(line)
    return lines


def resolve_requirements(task_requirements: dict | None, repo_dir: Path | None, *, cfg: Config | None = None,
                         entry_dir: Path | None = None, log: Log | None = None) -> Requirements:
    """What to install: the task's script.requirements (pip, conda; org_pip with
    agent.package_manager.force_original_requirements), else the requirements.txt nearest the entry point's folder
    (`entry_dir`), walking up to the repository root, else nothing. agent.package_manager.force_repo_requirements_txt
    prefers the repository's file. Local references of the recording machine that are missing here are replaced by
    name and version (env/requirements.py), each with a line to `log`."""
    reqs = task_requirements or {}
    force_original = bool(cfg and cfg.get("agent.package_manager.force_original_requirements"))
    force_repo = bool(cfg and cfg.get("agent.package_manager.force_repo_requirements_txt"))
    pip = reqs.get("org_pip") if force_original and reqs.get("org_pip") else reqs.get("pip")
    conda = reqs.get("org_conda") if force_original and reqs.get("org_conda") else reqs.get("conda")
    lines, conda_lines = parse_requirement_lines(pip), parse_requirement_lines(conda)
    python = requested_python(pip)
    repo_file = _nearest_requirements_file(repo_dir, entry_dir)
    if (lines or conda_lines) and not force_repo:
        found = Requirements(lines, "task", conda_lines, repo_dir, python)
    elif repo_file is not None:
        where = repo_file.parent.relative_to(repo_dir) if repo_dir is not None else repo_file.parent
        text = repo_file.read_text(encoding="utf-8", errors="replace")
        source = "repository requirements.txt" if str(where) == "." else f"repository {where}/requirements.txt"
        found = Requirements(parse_requirement_lines(text), source, conda_lines, repo_dir, python)
        pip = text
    elif lines or conda_lines:
        found = Requirements(lines, "task", conda_lines, repo_dir, python)
    else:
        return Requirements([], "none", [], repo_dir, python)
    found.lines = localize(found.lines, repo_dir, editable_versions(pip), log if log is not None else (lambda _: None))
    return found


def _nearest_requirements_file(repo_dir: Path | None, entry_dir: Path | None) -> Path | None:
    """requirements.txt in the entry point's folder or the nearest folder above it, up to the repository root."""
    if repo_dir is None:
        return None
    root = repo_dir.resolve()
    folder = (entry_dir or repo_dir).resolve()
    if folder != root and root not in folder.parents:
        folder = root
    while True:
        candidate = folder / "requirements.txt"
        if candidate.is_file():
            return candidate
        if folder == root:
            return None
        folder = folder.parent


def normalize_line(line: str) -> str:
    """A requirement line in one canonical spelling, for the cache key: "Six == 1.16" and "six==1.16" match."""
    line = " ".join(line.split())
    m = _NAME.match(line)
    if line.startswith("-") or not m:
        return line
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    extras = sorted({e.strip().lower() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip()})
    spec, _, marker = m.group(3).partition(";")
    if spec.strip().startswith("@"):
        spec = " @ " + spec.strip()[1:].strip()
    else:
        spec = ",".join(sorted(c.replace(" ", "") for c in spec.split(",") if c.strip()))
    marker = " ".join(marker.split())
    return name + (f"[{','.join(extras)}]" if extras else "") + spec + (f"; {marker}" if marker else "")


def environment_key(spec: BuildSpec, manager: Manager) -> str:
    """sha256 of what decides the venv's content: Python major.minor, manager (and its own settings),
    system site packages, extra index URLs and the sorted, normalized requirement lines."""
    doc = {"format": KEY_FORMAT, "python": spec.python_version, "manager": manager.name,
           "system_site_packages": bool(spec.cfg.get("agent.package_manager.system_site_packages")),
           "extra_index_url": config_list(spec.cfg, "agent.package_manager.extra_index_url"),
           "requirements": sorted({normalize_line(line) for line in spec.lines}),
           "options": manager.key_options(spec)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# -- the interpreter ---------------------------------------------------------------------------------------

# In a container, Conveyor runs from its own bundle (runtimes/bundle.py), whose interpreter the image cannot run on
# its own: the container's start-up (agent/container_start.py) names the image's interpreter, which stands in for the
# agent's own here.
TASK_PYTHON_ENV, TASK_PYTHON_VERSION_ENV = "CONVEYOR_TASK_PYTHON", "CONVEYOR_TASK_PYTHON_VERSION"


def agent_python() -> tuple[Path, str]:
    """The agent's interpreter; the base one when the agent runs in a venv (the task's venv must not chain)."""
    if os.environ.get(TASK_PYTHON_ENV) and os.environ.get(TASK_PYTHON_VERSION_ENV):
        return Path(os.environ[TASK_PYTHON_ENV]), os.environ[TASK_PYTHON_VERSION_ENV]
    base = getattr(sys, "_base_executable", None)
    exe = Path(base) if base and os.path.exists(base) else Path(sys.executable)
    return exe, ".".join(map(str, sys.version_info[:3]))


def _version_matches(version: str, wanted: str) -> bool:
    return version.split(".")[:len(wanted.split("."))] == wanted.split(".")


@functools.lru_cache(maxsize=64)
def _probe(exe: str) -> str | None:
    """major.minor.micro of an interpreter, or None when it does not run (a pyenv shim of a version that
    is not active, say)."""
    try:
        out = subprocess.run([exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, check=False, text=True, timeout=PROBE_TIMEOUT_SEC,
                             env=installer_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+", out.stdout.strip()) else None


@functools.lru_cache(maxsize=64)
def find_python(wanted: str) -> tuple[Path, str] | None:
    """An installed interpreter of version `wanted` ("3.10" or "3.10.13"): the agent's own, python<ver> on
    PATH (each checked by running it, as the reference does), pyenv's versions, then uv-managed ones."""
    own, own_version = agent_python()
    if _version_matches(own_version, wanted):
        return own, own_version
    parts = wanted.split(".")
    names = dict.fromkeys([f"python{wanted}", f"python{'.'.join(parts[:2])}", f"python{parts[0]}", "python"])
    candidates = [path for path in map(shutil.which, names) if path]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(glob.glob(str(pyenv / "versions" / f"{wanted}*" / "bin" / f"python{'.'.join(parts[:2])}")),
                         reverse=True)
    candidates += _uv_managed(wanted)
    for exe in candidates:
        version = _probe(exe)
        if version and _version_matches(version, wanted):
            return Path(exe), version
    return None


def _uv_managed(wanted: str) -> list[str]:
    uv = find_uv()
    if uv is None:
        return []
    try:  # only-managed: uv's PATH search stops at the first broken shim, so the PATH is searched above
        out = subprocess.run([uv, "python", "find", "--python-preference", "only-managed", wanted],
                             capture_output=True, check=False, text=True, timeout=PROBE_TIMEOUT_SEC,
                             env=installer_env({"UV_PYTHON_DOWNLOADS": "never"}))
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [out.stdout.strip()] if out.returncode == 0 and out.stdout.strip() else []


def select_python(requested: str | None, cfg: Config, log: Log) -> tuple[Path, str]:
    """The interpreter for the task: its script.binary ("python3.10"), else agent.python_binary, else
    agent.default_python, else the agent's own; one that is not installed falls back to the agent's own."""
    if cfg.get("agent.ignore_requested_python_version"):
        requested = None
    requested = (requested or cfg.get("agent.python_binary") or cfg.get("agent.default_python") or "").strip()
    own, own_version = agent_python()
    if not requested:
        return own, own_version
    found: tuple[Path, str] | None
    if os.sep in requested:  # a path to an interpreter
        version = _probe(requested)
        found = (Path(requested), version) if version else None
        wanted = requested
    else:
        m = _VERSION_IN.search(requested)
        if m is None and Path(requested).name.startswith("python"):
            return own, own_version  # plain "python": any will do
        wanted = m.group(1) if m else requested
        found = find_python(wanted) if m else None
    if found is None:
        log(f"python: Python {wanted} was requested but is not installed on this worker; "
            f"falling back to the agent's Python {own_version} ({own})")
        return own, own_version
    if found[0] != own:
        log(f"python: using Python {found[1]} ({found[0]})")
    return found


# -- building ----------------------------------------------------------------------------------------------

def build_environment(reqs: Requirements, *, cfg: Config, python_version: str | None = None,
                      work_dir: Path | None = None, log: Log = logger.info) -> PythonEnv:
    """A venv with `reqs` installed, from the venv cache when it has one (see the module's docstring).

    agent.package_manager.type picks the manager: uv (default), pip, poetry (the repository's
    pyproject.toml + poetry.lock with `poetry install`; pip when poetry or the files are missing) or conda.
    `work_dir` is the task's working copy (poetry's files; relative requirement paths use reqs.base_dir).
    Raises EnvBuildError with the installer's own reason when anything fails."""
    total = Timer()
    exe, version = select_python(python_version, cfg, log)
    spec = BuildSpec(cfg=cfg, base_python=exe, python_version=".".join(version.split(".")[:2]), lines=reqs.lines,
                     conda_lines=reqs.conda, base_dir=reqs.base_dir or work_dir, work_dir=work_dir)
    manager = _choose_manager(str(cfg.get("agent.package_manager.type")), spec, log)
    if reqs.lines or reqs.conda:
        log(f"python: {len(reqs.lines) + len(reqs.conda)} requirement lines from {reqs.source}")
    cache = VenvCache.from_config(cfg)
    reason = _why_uncached(cache, manager, spec)
    if reason is None:
        assert cache is not None
        key = environment_key(spec, manager)
        try:
            return _from_cache(cache, key, manager, spec, version, log, total)
        except CacheUnavailable as exc:
            reason = str(exc)
    log(f"python: venv cache not used: {reason}")
    return _build_uncached(manager, spec, version, log, total)


def build_environment_at(reqs: Requirements, path: Path | None, *, cfg: Config, python_version: str | None = None,
                         work_dir: Path | None = None, log: Log = logger.info) -> PythonEnv:
    """`reqs` installed into a fresh venv at `path` (replaced if there), outside the venv cache: for
    `conveyor build`, whose venv must stay where the user asked. `path` None installs into the interpreter itself
    (`build --install-globally`, meant for a container's own Python). Raises EnvBuildError."""
    total = Timer()
    exe, version = select_python(python_version, cfg, log)
    spec = BuildSpec(cfg=cfg, base_python=exe, python_version=".".join(version.split(".")[:2]), lines=reqs.lines,
                     conda_lines=reqs.conda, base_dir=reqs.base_dir or work_dir, work_dir=work_dir)
    manager = _choose_manager(str(cfg.get("agent.package_manager.type")), spec, log)
    if path is None:
        if manager.name not in ("uv", "pip"):
            raise EnvBuildError(f"Installing globally works with uv or pip, not {manager.name}: set "
                                "agent.package_manager.type to uv or pip")
        if spec.lines:
            # a container's Debian Python is marked externally managed (PEP 668); it is ours to fill here
            os.environ.setdefault("UV_BREAK_SYSTEM_PACKAGES", "1")
            os.environ.setdefault("PIP_BREAK_SYSTEM_PACKAGES", "1")
            count = manager.install(spec, exe, log)
            log(f"python: installed {count} packages into {exe} with {manager.name} {total}")
        return PythonEnv(path=exe.parent.parent, python=exe, manager=manager.name, cached=False, key=None,
                         python_version=version)
    path = Path(path).expanduser().absolute()
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    python = _build(manager, spec, path, log)
    log(f"python: environment ready at {path} {total}")
    return PythonEnv(path=path, python=python, manager=manager.name, cached=False, key=None, python_version=version)


def _choose_manager(name: str, spec: BuildSpec, log: Log) -> Manager:
    manager = get_manager(name)
    if manager.name == "uv" and uv_sync.has_lock(spec):
        log(f"python: the project has {uv_sync.LOCK_FILE}: installing it with uv sync "
            "(the task's requirement list is not used)")
        return uv_sync.UvSyncManager()
    if manager.name == "poetry":
        reason = poetry_unusable_reason(spec)
        if reason:
            log(f"python: {reason}; installing the requirements with pip instead")
            return PipManager()
    if manager.name == "conda":
        require_conda()  # before anything is created
    return manager


def _why_uncached(cache: VenvCache | None, manager: Manager, spec: BuildSpec) -> str | None:
    if cache is None:
        return "it is off (agent.venvs_cache.path empty or max_entries 0)"
    if manager.installs_project:
        return f"{manager.name} installs the repository's own project"
    external = [line for line in spec.lines if _EXTERNAL.search(line)]
    if external:
        return f"the requirements name local files or VCS checkouts ({scrub(external[0])})"
    return None


def _from_cache(cache: VenvCache, key: str, manager: Manager, spec: BuildSpec, version: str, log: Log,
                total: Timer) -> PythonEnv:
    meta = {"python": version, "base_python": str(spec.base_python), "manager": manager.name,
            "requirements": [scrub(line) for line in spec.lines]}
    built: list[bool] = []

    def build(path: Path) -> None:
        log(f"python: venv cache miss {key[:8]}…, building with {manager.name}")
        _build(manager, spec, path, log)
        built.append(True)

    lease = cache.acquire(key, build, meta, log)
    if lease.hit:
        log(f"python: venv cache hit {key[:8]}… {total}")
    else:
        log(f"python: added venv {key[:8]}… to the cache; environment ready {total}")
    return PythonEnv(path=lease.path, python=venv_python(lease.path), manager=manager.name, cached=True, key=key,
                     python_version=version, hit=lease.hit, _lease=lease)


def _build(manager: Manager, spec: BuildSpec, path: Path, log: Log) -> Path:
    step = Timer()
    python = manager.create(spec, path, log)
    log(f"python: created venv with {manager.name} {step}")
    if spec.lines or spec.conda_lines or manager.installs_project:
        step = Timer()
        count = manager.install(spec, python, log)
        log(f"python: installed {count} packages with {manager.name} {step}")
    return python


def _build_uncached(manager: Manager, spec: BuildSpec, version: str, log: Log, total: Timer) -> PythonEnv:
    """A fresh venv in agent.venvs_dir/<major.minor> (the reference's place), or <major.minor>.<n> while
    another task on this machine holds that one."""
    venvs_dir = spec.cfg.get_path("agent.venvs_dir")
    if venvs_dir is None:
        raise EnvBuildError("agent.venvs_dir is empty: set it to a folder where task venvs can be built")
    for slot in range(UNCACHED_SLOTS):
        path = venvs_dir / (spec.python_version + (f".{slot}" if slot else ""))
        lock = FileLock(path.with_name(path.name + ".lock"))
        if lock.acquire():
            break
    else:
        raise EnvBuildError(f"All {UNCACHED_SLOTS} venv folders under {venvs_dir} are in use by other tasks: "
                            "wait for them, or enable the venv cache (agent.venvs_cache)")
    try:
        shutil.rmtree(path, ignore_errors=True)  # fresh every time: a previous task's leftovers must not leak
        python = _build(manager, spec, path, log)
        log(f"python: environment ready {total}")
    except BaseException:
        lock.release()
        raise
    return PythonEnv(path=path, python=python, manager=manager.name, cached=False, key=None,
                     python_version=version, _lease=lock)


# -- freezing ----------------------------------------------------------------------------------------------

def freeze(env: PythonEnv) -> list[str]:
    """"pkg==ver" lines of what is installed in the environment (for tasks.set_requirements)."""
    saved = env.path / FREEZE_FILE
    if env.cached and saved.is_file():
        return saved.read_text(encoding="utf-8").splitlines()
    uv = find_uv()
    cmd = [uv, "pip", "freeze", "--python", str(env.python)] if uv else [str(env.python), "-m", "pip", "freeze"]
    try:
        out = subprocess.run(cmd, capture_output=True, check=False, text=True, timeout=FREEZE_TIMEOUT_SEC,
                             env=installer_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvBuildError(f"Could not list the installed packages: {exc}") from None
    if out.returncode != 0:
        raise EnvBuildError(f"Could not list the installed packages: {scrub(out.stderr.strip()) or out.returncode}")
    lines = [line.strip() for line in out.stdout.splitlines()
             if line.strip() and not line.startswith("#") and _dist_name(line) not in _NOT_IN_FREEZE]
    if env.cached:
        _save(saved, lines)
    return lines


def _save(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees all or nothing
    except OSError:
        pass  # a read-only cache: freeze again next time


def _dist_name(line: str) -> str:
    m = _NAME.match(line.strip())
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else ""
