"""Task Python environments: requirements, uv/pip/poetry/conda, the venv cache. Real installs from PyPI
(small pure-Python packages), with one uv download cache shared by the session so each wheel is fetched once."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conveyor.config import load_config
from conveyor.env.cache import ENVS_DIR, VenvCache
from conveyor.env.managers.base import BuildSpec, failure_reason, find_uv, scrub
from conveyor.env.managers.pip import version_matches
from conveyor.env.managers.uv import link_mode
from conveyor.env.python import (
    EnvBuildError,
    PythonEnv,
    Requirements,
    build_environment,
    find_python,
    freeze,
    normalize_line,
    resolve_requirements,
)

OWN_VERSION = ".".join(map(str, sys.version_info[:3]))
SDK_FREEZE = """# Python 3.11.7 (main, Jan 29 2024, 16:03:57) [GCC 12.2.0]

six == 1.16.0
idna==3.7   # inline comment
"""


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(autouse=True)
def _no_ambient_uv_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UV_CACHE_DIR", raising=False)  # the config key under test decides


class Logs(list):
    """A `log` callback that keeps the lines (thread-safe: list.append is atomic)."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def having(self, text: str) -> list[str]:
        return [line for line in self if text in line]


def make_cfg(tmp_path: Path, uv_cache: Path, manager: str = "uv", max_entries: int = 10, extra: str = ""):
    conf = tmp_path / "clearml.conf"
    conf.write_text(f"""
agent {{
  venvs_dir: "{tmp_path}/venvs-builds"
  venvs_cache {{ path: "{tmp_path}/venvs-cache", max_entries: {max_entries}, free_space_threshold_gb: 0 }}
  package_manager {{ type: "{manager}", uv_cache_dir: "{uv_cache}" }}
  {extra}
}}
""")
    return load_config(conf, environ={})


def reqs(*lines: str) -> Requirements:
    return Requirements(list(lines), "task")


def run_python(env: PythonEnv, code: str) -> str:
    return subprocess.run([str(env.python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


# -- requirements -----------------------------------------------------------------------------------------

def test_requirements_from_sdk_freeze_text() -> None:
    r = resolve_requirements({"pip": SDK_FREEZE, "conda": ""}, None)
    assert r.source == "task"
    assert r.lines == ["six == 1.16.0", "idna==3.7"]


def test_requirements_from_list_keep_url_fragments() -> None:
    r = resolve_requirements({"pip": ["six==1.16.0", "# a comment", "", "pkg @ https://h/p.whl#sha256=ab",
                                      "six==1.16.0"]}, None)
    assert r.lines == ["six==1.16.0", "pkg @ https://h/p.whl#sha256=ab"]


def test_requirements_from_repository_file(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("# deps\nattrs==23.2.0\n\npackaging\\\n==24.1\n")
    r = resolve_requirements({"pip": ""}, tmp_path)
    assert (r.source, r.lines, r.base_dir) == ("repository requirements.txt", ["attrs==23.2.0", "packaging ==24.1"],
                                               tmp_path)


def test_requirements_none(tmp_path: Path) -> None:
    assert resolve_requirements(None, tmp_path) == Requirements([], "none", [], tmp_path)
    assert resolve_requirements({"pip": "# only a comment\n"}, None).source == "none"


def test_requirements_force_switches(tmp_path: Path, uv_cache: Path) -> None:
    (tmp_path / "requirements.txt").write_text("attrs\n")
    task = {"pip": "six==1.16.0\n", "org_pip": "six\n"}
    cfg = make_cfg(tmp_path, uv_cache, extra="package_manager { force_repo_requirements_txt: true }")
    assert resolve_requirements(task, tmp_path, cfg=cfg).lines == ["attrs"]
    cfg = make_cfg(tmp_path, uv_cache, extra="package_manager { force_original_requirements: true }")
    assert resolve_requirements(task, tmp_path, cfg=cfg).lines == ["six"]


def test_sdk_local_references_install_by_name_and_version(tmp_path: Path, uv_cache: Path) -> None:
    """A freeze recorded on the user's machine: conda builds, an editable checkout, a local wheel and a local version
    label name things this worker lacks; each is installed by name and version, with one log line; the header's
    Python version is honoured when installed here."""
    other = next((v for v in ("3.12", "3.10") if find_python(v)), None)
    if other is None:
        pytest.fail("pyenv's 3.10 or 3.12 is part of this machine's image")
    (tmp_path / "lib").mkdir()
    freeze_text = f"""# Python {other}.1 (main, Jan 29 2024, 16:03:57) [GCC 12.2.0]
six @ file:///croot/six_1699000000000/work
# Editable install with no version control (idna==3.7)
-e /home/me/src/idna
attrs @ file:///home/me/wheels/attrs-23.2.0-py3-none-any.whl
packaging==24.1+conveyor.local
-e ./lib
"""
    logs = Logs()
    r = resolve_requirements({"pip": freeze_text}, tmp_path, log=logs)
    assert r.lines == ["six", "idna==3.7", "attrs==23.2.0", "packaging==24.1", "-e ./lib"]
    assert r.python == other
    assert logs.having("six @ file:///croot/six_1699000000000/work is a file of the recording machine; "
                       "installing six instead")
    assert logs.having("-e /home/me/src/idna is a folder of the recording machine; installing idna==3.7 instead")
    assert len(logs) == 4, logs  # the folder that exists here is kept as it is
    r.lines.remove("-e ./lib")
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    with build_environment(r, cfg=cfg, python_version=r.python, log=logs) as env:
        frozen = freeze(env)
        assert {"idna==3.7", "attrs==23.2.0", "packaging==24.1"} <= set(frozen)
        assert any(line.startswith("six==") for line in frozen)
        assert run_python(env, "import sys; print('%d.%d' % sys.version_info[:2])") == other
    r = resolve_requirements({"pip": "# Python 3.1.4 (main)\nsix\n"}, None)
    logs = Logs()
    with build_environment(r, cfg=cfg, python_version=r.python, log=logs) as env:
        assert env.python_version == OWN_VERSION
    assert logs.having("Python 3.1 was requested but is not installed on this worker")


def test_requirements_nearest_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("attrs\n")
    (tmp_path / "tools" / "train").mkdir(parents=True)
    (tmp_path / "tools" / "requirements.txt").write_text("six==1.16.0\n")
    r = resolve_requirements(None, tmp_path, entry_dir=tmp_path / "tools" / "train")
    assert (r.lines, r.source) == (["six==1.16.0"], "repository tools/requirements.txt")
    assert resolve_requirements(None, tmp_path, entry_dir=tmp_path).lines == ["attrs"]
    assert resolve_requirements({"pip": "idna\n"}, tmp_path, entry_dir=tmp_path / "tools").lines == ["idna"]


def test_line_normalization() -> None:
    assert normalize_line("Six == 1.16.0") == normalize_line("six==1.16.0") == "six==1.16.0"
    assert (normalize_line("Foo_Bar[B, a] >=1 , <2 ;python_version  >= '3.8'")
            == "foo-bar[a,b]<2,>=1; python_version >= '3.8'")


def test_failure_reason_and_scrub() -> None:
    uv_out = ["Using Python 3.11.7 environment at: v", "error: No solution found when resolving dependencies",
              ("  cause: Because nonexistent-pkg-xyz was not found in the package registry and you require "
               "nonexistent-pkg-xyz, we can conclude that your requirements are unsatisfiable."), "",
              "hint: something"]
    assert failure_reason(uv_out) == ("No solution found when resolving dependencies: Because nonexistent-pkg-xyz "
                                      "was not found in the package registry and you require nonexistent-pkg-xyz, "
                                      "we can conclude that your requirements are unsatisfiable (hint: something)")
    assert scrub("see https://bob:hunter2@pkgs.example.com/simple and https://tok@h/x") == \
        "see https://bob:****@pkgs.example.com/simple and https://****@h/x"
    assert version_matches("22.2.2", ">=20.3,<24.3") and not version_matches("24.3", ">=20.3,<24.3")


def test_uv_link_mode_follows_the_filesystem(tmp_path: Path, uv_cache: Path) -> None:
    spec = BuildSpec(cfg=make_cfg(tmp_path, uv_cache), base_python=Path(sys.executable), python_version="3", lines=[])
    assert link_mode(spec, tmp_path / "venv") == "hardlink"  # both under the same temp folder
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem")
    other = BuildSpec(cfg=make_cfg(tmp_path, shm / f"conveyor-uv-{os.getpid()}"), base_python=Path(sys.executable),
                      python_version="3", lines=[])
    try:
        assert link_mode(other, tmp_path / "venv") == "copy"
    finally:
        shutil.rmtree(shm / f"conveyor-uv-{os.getpid()}", ignore_errors=True)


# -- uv and the cache -------------------------------------------------------------------------------------

def test_uv_build_freeze_then_cache_hit(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    with build_environment(resolve_requirements({"pip": SDK_FREEZE}, None), cfg=cfg, log=logs) as env:
        assert (env.manager, env.cached, env.hit) == ("uv", True, False)
        assert "six==1.16.0" in freeze(env) and "idna==3.7" in freeze(env)
        assert run_python(env, "import six; print(six.__version__)") == "1.16.0"
    assert logs.having("created venv with uv (") and logs.having("installed 2 packages with uv (")
    assert logs.having(" + six==1.16.0"), "the installer's own output reaches the log"

    logs2 = Logs()
    start = time.perf_counter()
    with build_environment(resolve_requirements({"pip": SDK_FREEZE}, None), cfg=cfg, log=logs2) as again:
        elapsed = time.perf_counter() - start
        assert again.hit and again.key == env.key and again.path == env.path
        assert freeze(again) == freeze(env)
    assert elapsed < 0.5, f"warm set-up took {elapsed:.2f} s"
    assert logs2.having(f"venv cache hit {env.key[:8]}…") and not logs2.having("installed")


def test_requirement_order_and_spelling_give_one_key(tmp_path: Path, uv_cache: Path) -> None:
    cfg = make_cfg(tmp_path, uv_cache)
    with build_environment(reqs("idna==3.7", "six==1.16.0"), cfg=cfg, log=Logs()) as first:
        pass
    with build_environment(resolve_requirements({"pip": "# c\nSix == 1.16.0\nIDNA==3.7\n"}, None), cfg=cfg,
                           log=Logs()) as second:
        assert second.hit and second.key == first.key


def test_empty_requirements_are_cached_too(tmp_path: Path, uv_cache: Path) -> None:
    cfg = make_cfg(tmp_path, uv_cache)
    with build_environment(Requirements([], "none"), cfg=cfg, log=Logs()) as bare:
        assert not bare.hit and run_python(bare, "import sys; print(sys.prefix)") == str(bare.path)
    with build_environment(Requirements([], "none"), cfg=cfg, log=Logs()) as again:
        assert again.hit and again.path == bare.path


def test_failed_install_leaves_no_entry(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    with pytest.raises(EnvBuildError) as info:
        build_environment(reqs("six==1.16.0", "nonexistent-pkg-conveyor-xyz"), cfg=cfg, log=logs)
    message = str(info.value)
    assert message.startswith("Could not install requirements: ")
    assert "nonexistent-pkg-conveyor-xyz" in message and "not found in the package registry" in message
    cache = tmp_path / "venvs-cache"
    assert VenvCache.from_config(cfg).entries() == []
    assert list((cache / ENVS_DIR).iterdir()) == []
    assert logs.having("nonexistent-pkg-conveyor-xyz"), "uv's explanation is in the task log too"


class _NoPackages(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def test_index_credentials_never_reach_logs_or_errors(tmp_path: Path, uv_cache: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoPackages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://bob:hunter2@127.0.0.1:{server.server_address[1]}/simple"
    try:
        cfg = make_cfg(tmp_path, uv_cache, extra=f'package_manager {{ extra_index_url: ["{url}"] }}')
        logs = Logs()
        with pytest.raises(EnvBuildError) as info:
            build_environment(reqs("nonexistent-pkg-conveyor-xyz"), cfg=cfg, log=logs)
    finally:
        server.shutdown()
    assert "nonexistent-pkg-conveyor-xyz" in str(info.value)
    assert "hunter2" not in str(info.value) and not logs.having("hunter2")


def test_concurrent_builds_of_one_key_install_once(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    barrier, envs, errors = threading.Barrier(2), [], []

    def build() -> None:
        try:
            barrier.wait()
            envs.append(build_environment(reqs("attrs==23.2.0", "six==1.16.0"), cfg=cfg, log=logs))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(logs.having("python: installed ")) == 1, logs
    assert sorted(e.hit for e in envs) == [False, True] and envs[0].path == envs[1].path
    for env in envs:
        assert run_python(env, "import attrs; print(attrs.__version__)") == "23.2.0"
        env.release()


def test_eviction_is_lru_and_spares_entries_in_use(tmp_path: Path, uv_cache: Path) -> None:
    cfg = make_cfg(tmp_path, uv_cache, max_entries=2)
    cache = VenvCache.from_config(cfg)

    def build(*lines: str) -> PythonEnv:
        time.sleep(0.02)  # distinct LRU times
        return build_environment(reqs(*lines), cfg=cfg, log=Logs())

    a = build("six==1.16.0")
    a.release()
    b = build("idna==3.7")
    b.release()
    build("six==1.16.0").release()  # a hit: A is now more recent than B
    c = build("attrs==23.2.0")
    c.release()
    assert {e.key for e in cache.entries()} == {a.key, c.key}, "B was the least recently used"
    assert not b.path.exists()

    held = build("six==1.16.0")  # A in use ...
    assert held.hit
    build("attrs==23.2.0").release()  # ... and older than C
    d = build("packaging==24.1")
    d.release()
    assert {e.key for e in cache.entries()} == {a.key, d.key}, "C went, A stayed because it is in use"
    assert run_python(held, "import six; print(six.__version__)") == "1.16.0"
    held.release()


def test_cache_off_builds_fresh_in_venvs_dir(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache, max_entries=0), Logs()
    first = build_environment(reqs("six==1.16.0"), cfg=cfg, log=logs)
    major_minor = ".".join(OWN_VERSION.split(".")[:2])
    assert (first.path, first.cached, first.key) == (tmp_path / "venvs-builds" / major_minor, False, None)
    assert logs.having("venv cache not used: it is off")
    (first.path / "leftover").write_text("x")
    second = build_environment(reqs("six==1.16.0"), cfg=cfg, log=Logs())  # the first is still in use
    assert second.path == tmp_path / "venvs-builds" / f"{major_minor}.1"
    first.release()
    second.release()
    third = build_environment(reqs("six==1.16.0"), cfg=cfg, log=Logs())
    assert third.path == first.path and not (third.path / "leftover").exists(), "rebuilt from scratch"
    third.release()


def test_low_disk_space_builds_outside_the_cache(tmp_path: Path, uv_cache: Path) -> None:
    cfg = make_cfg(tmp_path, uv_cache, extra="venvs_cache { free_space_threshold_gb: 1000000 }")
    logs = Logs()
    with build_environment(reqs("six==1.16.0"), cfg=cfg, log=logs) as env:
        assert not env.cached and "six==1.16.0" in freeze(env)
    assert logs.having("agent.venvs_cache.free_space_threshold_gb")


def test_repository_relative_requirement_files_install_uncached(tmp_path: Path, uv_cache: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "base.txt").write_text("six==1.16.0\n")
    (repo / "requirements.txt").write_text("-r base.txt\n")
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    with build_environment(resolve_requirements(None, repo), cfg=cfg, log=logs) as env:
        assert not env.cached and "six==1.16.0" in freeze(env)
    assert logs.having("local files or VCS checkouts (-r base.txt)")


# -- other managers ---------------------------------------------------------------------------------------

def test_pip_manager(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache, manager="pip"), Logs()
    with build_environment(reqs("six==1.16.0"), cfg=cfg, log=logs) as env:
        assert env.manager == "pip" and env.cached
        assert "six==1.16.0" in freeze(env)
        assert run_python(env, "import six; print(six.__version__)") == "1.16.0"
    assert logs.having("created venv with pip (") and logs.having("installed 1 packages with pip (")
    with pytest.raises(EnvBuildError) as info:
        build_environment(reqs("nonexistent-pkg-conveyor-xyz"), cfg=cfg, log=Logs())
    assert "nonexistent-pkg-conveyor-xyz" in str(info.value)


def test_poetry_without_lock_file_falls_back_to_pip(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache, manager="poetry", extra='package_manager { pip_version: "" }'), Logs()
    with build_environment(reqs("six==1.16.0"), cfg=cfg, work_dir=tmp_path, log=logs) as env:
        assert env.manager == "pip" and "six==1.16.0" in freeze(env)
    assert logs.having("installing the requirements with pip instead")


def package_index_url() -> str:
    """The package index this machine's pip is configured for (its config, else pip's own default): no index host is
    written in the project."""
    for key in ("PIP_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if os.environ.get(key):
            return os.environ[key]
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True,
                          text=True, check=False)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


@pytest.fixture(scope="session")
def poetry_bin(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path) -> Path:
    """A real poetry, installed with `uv tool install` into a session folder (skipped when PyPI is unreachable)."""
    home = tmp_path_factory.mktemp("poetry-tool")
    env = {**os.environ, "UV_TOOL_DIR": str(home / "tools"), "UV_TOOL_BIN_DIR": str(home / "bin"),
           "UV_CACHE_DIR": str(uv_cache)}
    done = subprocess.run([find_uv(), "tool", "install", "poetry"], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        message = f"cannot install poetry: {done.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(message)  # PyPI is reachable on our machines: in CI this is a real failure
        pytest.skip(message)
    return home / "bin"


def test_poetry_installs_the_lock_file(tmp_path: Path, uv_cache: Path, poetry_bin: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{poetry_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("POETRY_CACHE_DIR", str(tmp_path / "poetry-cache"))
    repo = tmp_path / "repo"
    repo.mkdir()
    # the simple API as primary source: this network's proxy answers 404 on the index's per-version JSON API
    (repo / "pyproject.toml").write_text(f"""
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = ["six==1.16.0"]

[tool.poetry]
package-mode = false

[[tool.poetry.source]]
name = "configured"
url = "{package_index_url()}"
priority = "primary"
""")
    subprocess.run(["poetry", "lock"], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "POETRY_VIRTUALENVS_PATH": str(tmp_path / "poetry-venvs")})
    cfg, logs = make_cfg(tmp_path, uv_cache, manager="poetry"), Logs()
    with build_environment(resolve_requirements(None, repo), cfg=cfg, work_dir=repo, log=logs) as env:
        assert (env.manager, env.cached) == ("poetry", False)
        assert "six==1.16.0" in freeze(env)
    assert logs.having("installed 1 packages with poetry (") and logs.having("Installing six (1.16.0)")


def test_conda_missing_is_a_clear_error(tmp_path: Path, uv_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    cfg = make_cfg(tmp_path, uv_cache, manager="conda")
    with pytest.raises(EnvBuildError) as info:
        build_environment(reqs("six"), cfg=cfg, log=Logs())
    assert str(info.value) == ("conda is not installed on this worker: install it or set "
                               "agent.package_manager.type to uv")
    assert not (tmp_path / "venvs-cache").exists(), "nothing is created"


def test_unknown_manager(tmp_path: Path, uv_cache: Path) -> None:
    with pytest.raises(EnvBuildError, match="Unknown package manager 'npm'"):
        build_environment(reqs("six"), cfg=make_cfg(tmp_path, uv_cache, manager="npm"), log=Logs())


# -- the interpreter ----------------------------------------------------------------------------------------

def test_missing_python_version_falls_back_to_the_agents(tmp_path: Path, uv_cache: Path) -> None:
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    with build_environment(reqs("six==1.16.0"), cfg=cfg, python_version="python3.1", log=logs) as env:
        assert env.python_version == OWN_VERSION
    assert logs.having("Python 3.1 was requested but is not installed on this worker; falling back to the agent's")


def test_requested_python_version_is_used_when_installed(tmp_path: Path, uv_cache: Path) -> None:
    candidates = ("3.12", "3.10", "3.13", "3.11")
    other = next((v for v in candidates if not OWN_VERSION.startswith(v + ".") and find_python(v)),
                 None)
    if other is None:
        pytest.skip("no second Python version on this machine")
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    with build_environment(reqs("six==1.16.0"), cfg=cfg, python_version=f"python{other}", log=logs) as env:
        assert env.python_version.startswith(other + ".")
        assert run_python(env, "import sys, six; print('%d.%d' % sys.version_info[:2])") == other
    with build_environment(reqs("six==1.16.0"), cfg=cfg, log=Logs()) as own:
        assert own.key != env.key, "the Python version is part of the key"


def test_uv_lock_is_installed_with_uv_sync(tmp_path: Path, uv_cache: Path) -> None:
    """agent.package_manager.type uv and a repository with uv.lock: `uv sync --frozen`, the task's list unused."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("""
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = ["six==1.16.0"]

[tool.uv]
package = false
""")
    locked = subprocess.run([find_uv(), "lock"], cwd=repo, capture_output=True, text=True, check=False,
                            env={**os.environ, "UV_CACHE_DIR": str(uv_cache)})
    assert locked.returncode == 0, locked.stderr
    cfg, logs = make_cfg(tmp_path, uv_cache), Logs()
    task_reqs = resolve_requirements({"pip": "idna==3.7\n"}, repo)
    with build_environment(task_reqs, cfg=cfg, work_dir=repo, log=logs) as env:
        assert (env.manager, env.cached) == ("uv sync", False)
        frozen = freeze(env)
        assert "six==1.16.0" in frozen and not any(line.startswith("idna") for line in frozen)
        assert not (repo / ".venv").exists(), "the task's venv is the agent's, not the repository's .venv"
    assert logs.having("the project has uv.lock: installing it with uv sync")
    assert logs.having("--frozen") or logs.having("installed 1 packages with uv sync")
    # A lock that does not match pyproject.toml fails with uv's reason under --locked
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text().replace("six==1.16.0", "six==1.15.0"))
    cfg = make_cfg(tmp_path, uv_cache, extra="package_manager { uv_sync_locked_if_lock_file: true }")
    with pytest.raises(EnvBuildError, match="Could not install uv.lock with uv sync"):
        build_environment(task_reqs, cfg=cfg, work_dir=repo, log=Logs())
