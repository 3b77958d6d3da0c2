"""Conveyor's own runtime for containers: a self-contained bundle, made once per host and Conveyor build, mounted
read-only at CONTAINER_DIR in every container, so that what drives a task there (`conveyor execute`: clone, logs,
aborts, status) needs nothing of the image but /bin/sh: not its Python, not its git, not its C library.

    <root>/<key>/lib/          the host's dynamic loader (ld-linux) and every shared library loaded below, libc too
                 python/       the agent's own CPython (its base interpreter) and standard library
                 site/         Conveyor's package and its agent-side dependencies, copied from the agent's environment;
                               site/bin/uv wraps the host's uv (uv/uv), where the uv package's find_uv_bin looks
                 git/, git-core/, bin/git   the host's git, its helpers and templates (GIT_EXEC_PATH = git-core/)
                 start.py      the launcher: site/ on sys.path, then a module as __main__
                 READY         written last: what is inside (JSON)

Every binary starts through the bundle's own loader (`lib/ld-linux-x86-64.so.2 --library-path lib ...`), never
through LD_LIBRARY_PATH: the processes they start (the image's python, the task) see the image's own libraries.
The wrappers find the bundle from their own path, so a copy elsewhere (`conveyor build --docker`) works as well.
Nothing is fetched: the files are the host's, so containers never reach a package index for Conveyor.
"""

from __future__ import annotations

import compileall
import fcntl
import functools
import glob
import hashlib
import importlib.metadata as metadata
import json
import logging
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import conveyor
from conveyor.env.managers.base import find_uv
from conveyor.errors import TaskFailure
from conveyor.progress import Log

CONTAINER_DIR = "/opt/conveyor"  # where the bundle is mounted in containers
READY = "READY"
FORMAT = 3  # bump when the layout changes, so that old bundles stop matching
# not for execute
SERVER_ONLY = {"starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "psycopg-pool", "python-multipart"}
PREPARE_TIMEOUT_SEC = 900  # a wait for another process's preparation of the same bundle
UNUSED_DAYS = 14  # a bundle no container started from for this long is removed (each Conveyor upgrade makes one)
_TOUCH_EVERY_SEC = 3600  # READY's mtime is the last use, refreshed at most this often
RUN_TIMEOUT_SEC = 120  # ldd, the self-check
# parts of the standard library that `conveyor execute` never imports (and whose libraries would be X11's)
_STDLIB_SKIPPED = {"test", "site-packages", "dist-packages", "idlelib", "tkinter", "turtledemo", "lib2to3",
                   "ensurepip", "__phello__"}
_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)")
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

log = logging.getLogger(__name__)

_LAUNCHER = '''\
"""Conveyor's bundle launcher: `python -I start.py MODULE ARGS...` runs MODULE with the bundle's site/ on sys.path."""
import os, runpy, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "site"))
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''

_WRAPPER = '''\
#!/bin/sh
# Conveyor's bundle: {what}, through the bundle's own loader and libraries.
r="${{0%/*}}/{up}"
{env}exec "$r/lib/{loader}" --library-path "$r/lib" --inhibit-cache "$r/{target}" {args}"$@"
'''


class BundleError(TaskFailure):
    """The bundle could not be made, so the task's container cannot start; the message says why (one line) and what
    to do."""

    failure_class = "infrastructure"  # the engine, the image or the machine: another try may start it


@dataclass(frozen=True)
class Bundle:
    """A made bundle: mount `host_dir` at `container_dir` (read-only) and run `module_argv(...)` there."""

    host_dir: Path
    loader: str  # the file name of the bundled dynamic loader, e.g. ld-linux-x86-64.so.2
    python: str  # python/bin/python3.11, relative to the bundle
    container_dir: str = CONTAINER_DIR

    def python_argv(self, at: str | None = None) -> list[str]:
        """argv of the bundle's python found at `at` (default: where it is mounted), isolated from the image's
        PYTHON* settings."""
        at = at or self.container_dir
        return [f"{at}/lib/{self.loader}", "--library-path", f"{at}/lib", "--inhibit-cache", f"{at}/{self.python}",
                "-I"]

    def module_argv(self, module: str, *args: str, at: str | None = None) -> list[str]:
        """argv that runs `python -m module args` with the bundle's packages."""
        at = at or self.container_dir
        return [*self.python_argv(at), "-u", f"{at}/start.py", module, *args]

    def mount(self) -> list[str]:
        return ["-v", f"{self.host_dir}:{self.container_dir}:ro"]

    @property
    def bin_dir(self) -> str:
        return f"{self.container_dir}/bin"


# -- what goes in ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def package_source() -> tuple[Path, str]:
    """The running Conveyor's package folder and a digest of its files (an editable install changes without
    changing its version, so the version alone cannot key the bundle)."""
    root = Path(conveyor.__file__).resolve().parent
    digest = hashlib.sha256(conveyor.__version__.encode())
    for path in sorted(_package_files(root)):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return root, digest.hexdigest()


def _package_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


@functools.lru_cache(maxsize=1)
def agent_distributions() -> dict[str, str]:
    """{name: version} of Conveyor's declared dependencies, less the server-only ones, and of their own
    dependencies, as installed for the agent."""
    found: dict[str, str] = {}
    todo = [_name(line) for line in _declared_requirements() if _name(line) not in SERVER_ONLY]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist.version
        todo += [_name(r) for r in dist.requires or [] if "extra ==" not in r and _name(r) not in found]
    return dict(sorted(found.items()))


def _declared_requirements() -> list[str]:
    # A source checkout's pyproject.toml is the truth (an editable install's metadata may be older than it).
    pyproject = Path(conveyor.__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):  # Python 3.10 has no TOML reader: the metadata then
        import tomllib

        try:
            project = tomllib.loads(pyproject.read_text())["project"]
            if project.get("name") == "conveyor":
                return list(project.get("dependencies") or [])
        except (KeyError, ValueError) as exc:
            log.debug("%s: no usable [project] table (%s); using the installed metadata", pyproject, exc)
    return [r for r in metadata.requires("conveyor") or [] if "extra ==" not in r]


def _name(requirement: str) -> str:
    m = _REQ_NAME.match(requirement)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else requirement


@dataclass(frozen=True)
class HostTools:
    """The host's programs that go into the bundle."""

    python: Path  # the base interpreter (a venv's python is a link to it)
    stdlib: Path
    git: Path | None
    uv: Path

    @classmethod
    def find(cls) -> HostTools:
        base = getattr(sys, "_base_executable", None) or sys.executable
        python = Path(base).resolve()
        stdlib = Path(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix,
                                                         "base": sys.base_prefix})).resolve()
        git = shutil.which("git")
        uv = find_uv()
        if uv is None:
            raise BundleError("uv is not installed on the agent (pip install uv): containers use the agent's uv")
        return cls(python, stdlib, Path(git).resolve() if git else None, Path(uv).resolve())

    def key(self) -> str:
        """What the bundle is made of, cheaply: the files' identities, Conveyor's digest, the dependencies."""
        _, digest = package_source()
        ids = [[str(p), *_identity(p)] for p in (self.python, self.git, self.uv) if p is not None]
        blob = json.dumps([FORMAT, platform.machine(), conveyor.__version__, digest, agent_distributions(), ids,
                           str(self.stdlib)])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


# -- making it ------------------------------------------------------------------------------------------------

def prepare(root: Path, *, log: Log) -> Bundle:
    """The bundle under `root` for this host and Conveyor build, made now if missing (a few seconds, once)."""
    tools = HostTools.find()
    final = root / tools.key()
    info = _ready(final)
    if info is not None:
        return _bundle(final, info)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".locks" / f"{final.name}.lock"):
        info = _ready(final)
        if info is None:
            started = time.monotonic()
            staging = root / f".{final.name}.{secrets.token_hex(4)}"
            staging.mkdir()
            try:
                info = _make(staging, tools)
                (staging / READY).write_text(json.dumps(info, indent=1) + "\n")
                shutil.rmtree(final, ignore_errors=True)  # an incomplete one (READY removed by hand)
                staging.rename(final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            log(f"conveyor: made Conveyor's bundle for containers in {time.monotonic() - started:.1f} s ({final})")
    _prune(root, keep=final.name)
    return _bundle(final, info)


def current() -> Bundle | None:
    """The bundle this process runs from (a glue in a pod of the Conveyor image), if it runs from one."""
    root = Path(conveyor.__file__).resolve().parents[2]  # <bundle>/site/conveyor/__init__.py
    info = _ready(root)
    return _bundle(root, info) if info is not None and (root / "start.py").is_file() else None


def _bundle(path: Path, info: dict[str, str]) -> Bundle:
    return Bundle(path, loader=info["loader"], python=info["python"])


def _ready(path: Path) -> dict[str, str] | None:
    ready = path / READY
    try:
        info = json.loads(ready.read_text())
        if time.time() - ready.stat().st_mtime > _TOUCH_EVERY_SEC:
            os.utime(ready)
        return info
    except (OSError, ValueError):
        return None


def _make(r: Path, tools: HostTools) -> dict[str, str]:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    elves: list[Path] = []
    # the interpreter and its standard library (pyc files kept with their sources' mtimes: still valid)
    (r / "python" / "bin").mkdir(parents=True)
    python = r / "python" / "bin" / f"python{version}"
    shutil.copy2(tools.python, python)
    elves.append(python)
    _copy_tree(tools.stdlib, r / "python" / "lib" / f"python{version}", skip=_STDLIB_SKIPPED,
               skip_files=lambda name: ".opt-" in name or name.startswith("_tkinter"))
    elves += (r / "python" / "lib" / f"python{version}" / "lib-dynload").glob("*.so")
    # Conveyor and its agent-side dependencies, as the agent has them
    site = r / "site"
    _copy_distributions(site)
    _copy_conveyor(site)
    compileall.compile_dir(site, quiet=2, ddir=f"{CONTAINER_DIR}/site", workers=1)
    elves += site.rglob("*.so")
    # uv, and git with its helpers
    (r / "uv").mkdir()
    shutil.copy2(tools.uv, r / "uv" / "uv")
    elves.append(r / "uv" / "uv")
    if tools.git is not None:
        elves += _copy_git(r, tools.git)
    loader = _copy_libraries(r / "lib", elves)
    (site / "bin").mkdir(exist_ok=True)
    _write_wrapper(site / "bin" / "uv", "uv", "uv/uv", loader, up="../..")
    if tools.git is not None:
        _write_git_wrappers(r, loader)
    (r / "start.py").write_text(_LAUNCHER)
    # `bin/conveyor ARGS` runs Conveyor from the bundle wherever it is copied (an image with /bin/sh);
    # `bin/conveyor-start ARGS` first readies the image (its Python, git) as in a task's container: a daemon's pod
    (r / "bin").mkdir(exist_ok=True)
    for name, module in (("conveyor", "conveyor"), ("conveyor-start", "conveyor.agent.container_start")):
        _write_wrapper(r / "bin" / name, name, f"python/bin/python{version}", loader, up="..",
                       args=["-I", "-u", '"$r/start.py"', module])
    info = {"loader": loader, "python": f"python/bin/python{version}", "python_version": platform.python_version(),
            "conveyor": conveyor.__version__, "git": str(tools.git or ""), "made_from": str(tools.python)}
    _self_check(r, _bundle(r, info))
    return info


def _copy_tree(src: Path, dst: Path, *, skip: set[str], skip_files: Callable[[str], bool]) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not (here == src and d in skip) and not d.startswith("config-")]
        target = dst / here.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if not skip_files(name):
                shutil.copy2(here / name, target / name)


def _copy_distributions(site: Path) -> None:
    """Each dependency's installed files (its RECORD), from wherever the agent's environment has them."""
    for name in agent_distributions():
        dist = metadata.distribution(name)
        for file in dist.files or []:
            rel = Path(str(file))
            if rel.parts and rel.parts[0] == ".." or "__pycache__" in rel.parts:
                continue  # console scripts (../../bin) name the host's python; pyc files are made anew
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                (site / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, site / rel)


def _copy_conveyor(site: Path) -> None:
    root, digest = package_source()
    shutil.copytree(root, site / "conveyor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = site / f"conveyor-{conveyor.__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: conveyor\nVersion: {conveyor.__version__}\n")
    (info / "INSTALLER").write_text("conveyor-bundle\n")
    (info / "conveyor_build.json").write_text(json.dumps({"source": str(root), "digest": digest}) + "\n")


def _copy_git(r: Path, git: Path) -> list[Path]:
    """git's binary and exec path (git-core): each helper binary once (many are links of git itself), the scripts
    as they are. The wrappers are written once the loader is known."""
    out = subprocess.run([str(git), "--exec-path"], capture_output=True, text=True, timeout=RUN_TIMEOUT_SEC)
    exec_path = Path(out.stdout.strip())
    if out.returncode != 0 or not exec_path.is_dir():
        raise BundleError(f"could not find git's helpers ({git} --exec-path: {out.stderr.strip() or out.returncode})")
    (r / "git" / "bin").mkdir(parents=True)
    (r / "git" / "libexec").mkdir()
    (r / "git-core").mkdir()
    shutil.copy2(git, r / "git" / "bin" / "git")
    elves = [r / "git" / "bin" / "git"]
    seen = {_inode(git): "git/bin/git"}
    if (exec_path / "git").is_file():  # Debian's git-core/git is a copy of git, and its builtins are links of it
        seen[_inode(exec_path / "git")] = "git/bin/git"
    plan: dict[str, str] = {}  # helper name -> the binary it runs (relative to the bundle), "" for a builtin
    for entry in sorted(exec_path.iterdir()):
        if entry.is_dir():
            shutil.copytree(entry, r / "git-core" / entry.name, symlinks=True)
            continue
        if not _is_elf(entry):
            shutil.copy2(entry, r / "git-core" / entry.name)
            continue
        ident = _inode(entry)
        if seen.get(ident) == "git/bin/git":
            plan[entry.name] = ""
            continue
        if ident not in seen:
            seen[ident] = f"git/libexec/{entry.name}"
            shutil.copy2(entry, r / seen[ident])
            elves.append(r / seen[ident])
        plan[entry.name] = seen[ident]
    (r / "git" / "plan.json").write_text(json.dumps(plan))
    templates = Path("/usr/share/git-core/templates")
    if templates.is_dir():
        shutil.copytree(templates, r / "git" / "templates", symlinks=True)
    return elves


def _write_git_wrappers(r: Path, loader: str) -> None:
    env = 'GIT_EXEC_PATH="$r/git-core"; export GIT_EXEC_PATH\n'
    if (r / "git" / "templates").is_dir():
        env += ': "${GIT_TEMPLATE_DIR:=$r/git/templates}"; export GIT_TEMPLATE_DIR\n'
    plan = json.loads((r / "git" / "plan.json").read_text())
    (r / "git" / "plan.json").unlink()
    (r / "bin").mkdir(exist_ok=True)
    _write_wrapper(r / "bin" / "git", "git", "git/bin/git", loader, up="..", env=env)
    for name, target in plan.items():
        builtin = "" if target else name.removeprefix("git-")
        _write_wrapper(r / "git-core" / name, f"git's {name}", target or "git/bin/git", loader, up="..", env=env,
                       args=[builtin] if builtin and builtin != "git" else [])


def _write_wrapper(path: Path, what: str, target: str, loader: str, *, up: str, env: str = "",
                   args: Iterable[str] = ()) -> None:
    path.write_text(_WRAPPER.format(what=what, up=up, env=env, loader=loader, target=target,
                                    args="".join(f"{a} " for a in args)))
    path.chmod(0o755)


def _copy_libraries(lib: Path, elves: list[Path]) -> str:
    """Every shared library the binaries load (as ldd resolves them on the host), and the loader; its file name."""
    lib.mkdir()
    needed: dict[str, Path] = {}
    loader = ""
    for start in range(0, len(elves), 200):
        batch = [str(p) for p in elves[start:start + 200]]
        out = subprocess.run(["ldd", *batch], capture_output=True, text=True, timeout=RUN_TIMEOUT_SEC)
        for line in out.stdout.splitlines():
            m = _LDD_LINE.match(line)
            if m:
                path = Path(m.group(1))
                needed.setdefault(path.name, path)
                if "=>" not in line and path.name.startswith("ld-"):
                    loader = path.name
    if not loader:
        raise BundleError("could not find the host's dynamic loader (ldd of the agent's python); Conveyor's bundle "
                          "for containers needs a glibc host")
    if "libgcc_s.so.1" not in needed:  # glibc loads it itself when a thread is cancelled
        found = [Path(p) for p in (*glob.glob("/lib*/*-linux-gnu/libgcc_s.so.1"), "/lib64/libgcc_s.so.1")
                 if os.path.isfile(p)]
        if found:
            needed["libgcc_s.so.1"] = found[0]
    for name, path in needed.items():
        if path.is_file():
            shutil.copy2(path.resolve(), lib / name)
    return loader


def _self_check(r: Path, bundle: Bundle) -> None:
    """The bundle runs here as it will in a container: Conveyor imports, git and uv answer."""
    check = ("import conveyor.cli.main, conveyor.agent.executor, conveyor.agent.container_start, conveyor.env.vcs;"
             "from uv import find_uv_bin; import subprocess;"
             "subprocess.run([find_uv_bin(), '--version'], check=True, stdout=subprocess.DEVNULL)")
    argv = [*bundle.python_argv(at=str(r)), "-c", f"import sys; sys.path.insert(0, {str(r / 'site')!r}); {check}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_SEC, env=_plain_env())
    if out.returncode != 0:
        raise BundleError(f"Conveyor's bundle for containers does not run: {_tail(out)}")
    if (r / "bin" / "git").exists():
        out = subprocess.run([str(r / "bin" / "git"), "--version"], capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_SEC, env=_plain_env())
        if out.returncode != 0:
            raise BundleError(f"the bundle's git does not run: {_tail(out)}")


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_", "GIT_"))}


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _inode(path: Path) -> tuple[int, int]:
    st = path.resolve().stat()
    return st.st_dev, st.st_ino


def _prune(root: Path, keep: str) -> None:
    """Remove bundles unused for UNUSED_DAYS, and what interrupted preparations left (under their lock)."""
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
        except BundleError:
            continue  # being prepared right now


def _tail(out: subprocess.CompletedProcess[str], lines: int = 3) -> str:
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
                    raise BundleError(f"another agent has been preparing {self.path.stem} for over "
                                      f"{self.wait:g} s; remove {self.path} if none runs") from None
                time.sleep(0.2)

    def __exit__(self, *_exc: object) -> None:
        self.handle.close()


__all__ = ["CONTAINER_DIR", "Bundle", "BundleError", "HostTools", "agent_distributions", "package_source", "prepare"]
