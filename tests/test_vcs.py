"""conveyor.env.vcs with real git: bare repositories served as file:// (and one over http, for credentials)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.config import Config, load_config
from conveyor.env.git_auth import ASKPASS_USER_VAR, askpass_environment, split_credentials
from conveyor.env.vcs import (
    Checkout,
    GitAuth,
    VcsError,
    apply_diff,
    looks_like_patch,
    prepare_repository,
    rewrite_url,
    write_standalone_script,
)

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "a@b"}
SECRET = "s3cr3t-Pa55word"


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    result = subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


class Origin:
    """A bare repository (the remote) and a working copy that commits and pushes to it."""

    def __init__(self, root: Path, name: str = "proj", default_branch: str = "main"):
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        self.work.mkdir(parents=True)
        git(self.work, "init", "-q", "-b", default_branch)
        self.commit({"README.md": f"# {name}\n"}, "initial")
        git(root, "clone", "-q", "--bare", str(self.work), str(self.bare))
        git(self.work, "remote", "add", "origin", str(self.bare))
        git(self.work, "fetch", "-q", "origin")

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        for name, content in files.items():
            path = self.work / name
            if content is None:
                git(self.work, "rm", "-q", name)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            git(self.work, "add", name)
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *refs: str) -> None:
        git(self.work, "push", "-q", "--force", "origin", *(refs or ["--all"]))
        git(self.work, "push", "-q", "--force", "origin", "--tags")


@pytest.fixture
def make_cfg(tmp_path: Path):
    def make(**agent: object) -> Config:
        env = {"HOME": str(tmp_path / "home"),
               "CLEARML_AGENT__AGENT__VCS_CACHE__PATH": str(tmp_path / "vcs-cache")}
        for key, value in agent.items():
            env[f"CLEARML_AGENT__AGENT__{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return load_config(environ=env)
    return make


@pytest.fixture
def cfg(make_cfg) -> Config:
    return make_cfg()


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path / "remotes")


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


# ------------------------------------------------------------------------------------------ checkouts


def test_default_branch_through_the_cache(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    head = git(origin.work, "rev-parse", "HEAD")
    log = Log()
    checkout = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=log)
    assert checkout == Checkout(path=tmp_path / "task", commit=head, branch="main", repository=origin.url)
    assert (tmp_path / "task" / "README.md").read_text() == "# proj\n"
    assert git(tmp_path / "task", "remote", "get-url", "origin") == origin.url
    assert git(tmp_path / "task", "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert log.has("into the cache in") and log.has(f"checked out {head[:7]} (branch main)")
    # an independent repository: removing the cache leaves it whole
    shutil.rmtree(tmp_path / "vcs-cache")
    assert git(tmp_path / "task", "fsck", "--no-progress") == ""
    assert git(tmp_path / "task", "log", "--format=%s") == "initial"


def test_default_branch_other_than_main(tmp_path: Path, cfg: Config) -> None:
    origin = Origin(tmp_path / "remotes", default_branch="trunk")
    checkout = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    assert checkout.branch == "trunk"


@pytest.mark.parametrize("cache", [True, False])
def test_branch_tag_commit_and_their_precedence(origin: Origin, make_cfg, tmp_path: Path, cache: bool) -> None:
    cfg = make_cfg(vcs_cache__enabled=cache)
    first = git(origin.work, "rev-parse", "HEAD")
    git(origin.work, "tag", "v1")
    git(origin.work, "checkout", "-q", "-b", "feature")
    on_feature = origin.commit({"feature.py": "print('feature')\n"})
    git(origin.work, "checkout", "-q", "main")
    on_main = origin.commit({"main.py": "print('main')\n"})
    origin.push()

    def prep(**kw: str) -> Checkout:
        return prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log(), **kw)

    assert prep().commit == on_main
    got = prep(branch="feature")
    assert (got.commit, got.branch) == (on_feature, "feature")
    assert (tmp_path / "task" / "feature.py").exists() and not (tmp_path / "task" / "main.py").exists()
    assert prep(branch="origin/feature").commit == on_feature  # the upstream name tasks sometimes record
    got = prep(tag="v1")
    assert (got.commit, got.branch) == (first, None)
    assert prep(tag="v1", branch="feature").commit == first  # tag wins over branch
    got = prep(commit=on_feature, tag="v1", branch="main")  # commit wins over both
    assert (got.commit, got.branch) == (on_feature, "main")
    assert git(tmp_path / "task", "rev-parse", "HEAD") == on_feature
    assert prep(commit=on_feature[:10]).commit == on_feature  # a short sha


def test_local_path_and_relative_repository(origin: Origin, cfg: Config, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(origin.bare.parent)
    checkout = prepare_repository(origin.bare.name, tmp_path / "task", cfg=cfg, log=Log())
    assert checkout.repository == str(origin.bare)
    assert git(tmp_path / "task", "remote", "get-url", "origin") == str(origin.bare)


def test_dest_that_is_not_a_working_copy_is_left_alone(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    dest = tmp_path / "task"
    dest.mkdir()
    (dest / "precious.txt").write_text("mine")
    with pytest.raises(VcsError, match="is not a git working copy"):
        prepare_repository(origin.url, dest, cfg=cfg, log=Log())
    assert (dest / "precious.txt").read_text() == "mine"


def test_previous_working_copy_is_replaced(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    (tmp_path / "task" / "leftover.txt").write_text("from the last task")
    prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    assert not (tmp_path / "task" / "leftover.txt").exists()


# ------------------------------------------------------------------------------------------- failures


def test_missing_repository(cfg: Config, tmp_path: Path) -> None:
    url = (tmp_path / "nowhere.git").as_uri()
    with pytest.raises(VcsError) as error:
        prepare_repository(url, tmp_path / "task", cfg=cfg, log=Log())
    assert str(error.value).startswith(f"Could not clone {url}: repository not found — check the URL and credentials")


def test_missing_repository_without_cache(make_cfg, tmp_path: Path) -> None:
    url = (tmp_path / "nowhere.git").as_uri()
    with pytest.raises(VcsError, match="repository not found"):
        prepare_repository(url, tmp_path / "task", cfg=make_cfg(vcs_cache__enabled=False), log=Log())


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("warm", [False, True])
def test_missing_branch_tag_commit(origin: Origin, make_cfg, tmp_path: Path, cache: bool, warm: bool) -> None:
    cfg = make_cfg(vcs_cache__enabled=cache)
    if warm:
        prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    with pytest.raises(VcsError) as error:
        prepare_repository(origin.url, tmp_path / "task", branch="nope", cfg=cfg, log=Log())
    assert str(error.value).startswith(f"Branch 'nope' not found in {origin.url}")
    with pytest.raises(VcsError, match=f"^Tag 'v9' not found in {origin.url}"):
        prepare_repository(origin.url, tmp_path / "task", tag="v9", cfg=cfg, log=Log())
    with pytest.raises(VcsError, match=f"^Commit '{'ab' * 20}' not found in {origin.url}"):
        prepare_repository(origin.url, tmp_path / "task", commit="ab" * 20, cfg=cfg, log=Log())


def test_empty_repository(tmp_path: Path, cfg: Config) -> None:
    bare = tmp_path / "empty.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    with pytest.raises(VcsError, match="no default branch"):
        prepare_repository(bare.as_uri(), tmp_path / "task", cfg=cfg, log=Log())


def test_git_missing(origin: Origin, cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(VcsError, match="git is not installed"):
        prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    with pytest.raises(VcsError, match="git is not installed"):
        apply_diff(tmp_path, "diff --git a/x b/x\n")


# ---------------------------------------------------------------------------------------------- cache


def test_cache_reuse_fetches_only_what_is_new(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    first = git(origin.work, "rev-parse", "HEAD")
    prepare_repository(origin.url, tmp_path / "a", cfg=cfg, log=Log())
    mirrors = [p for p in (tmp_path / "vcs-cache").iterdir() if p.is_dir()]
    assert len(mirrors) == 1 and mirrors[0].name.startswith("proj.")

    log = Log()
    assert prepare_repository(origin.url, tmp_path / "b", cfg=cfg, log=log).commit == first
    assert log.has("is in the cache") and not log.has("fetched") and not log.has("into the cache")

    second = origin.commit({"new.txt": "new\n"})
    origin.push()
    log = Log()
    assert prepare_repository(origin.url, tmp_path / "c", cfg=cfg, log=log).commit == second
    assert log.has(f"git: fetched mirror of {origin.url} in ")
    assert (tmp_path / "c" / "new.txt").exists()

    # a new tag and a commit only a new branch holds are fetched on demand too
    git(origin.work, "tag", "v2")
    git(origin.work, "checkout", "-q", "-b", "later")
    third = origin.commit({"later.txt": "x\n"})
    origin.push()
    assert prepare_repository(origin.url, tmp_path / "d", tag="v2", cfg=cfg, log=Log()).commit == second
    assert prepare_repository(origin.url, tmp_path / "e", commit=third, cfg=cfg, log=Log()).commit == third
    assert len([p for p in (tmp_path / "vcs-cache").iterdir() if p.is_dir()]) == 1


def test_warm_commit_needs_no_remote_and_is_fast(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    sha = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log()).commit
    origin.bare.rename(origin.bare.with_name("gone.git"))  # the network is down
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        checkout = prepare_repository(origin.url, tmp_path / "task", commit=sha, cfg=cfg, log=Log())
        timings.append(time.perf_counter() - started)
        assert checkout.commit == sha
    assert min(timings) < 0.3, timings
    # a branch needs the remote: an unreachable one is an error, not stale code
    with pytest.raises(VcsError, match="Could not clone"):
        prepare_repository(origin.url, tmp_path / "task", branch="main", cfg=cfg, log=Log())


def test_same_repository_under_different_spellings_shares_one_mirror(origin: Origin, cfg: Config,
                                                                      tmp_path: Path) -> None:
    prepare_repository(origin.url, tmp_path / "a", cfg=cfg, log=Log())
    log = Log()
    prepare_repository(origin.url + "/", tmp_path / "b", cfg=cfg, log=log)
    assert not log.has("into the cache")


def test_broken_mirror_is_cloned_again(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    sha = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log()).commit
    mirror = next(p for p in (tmp_path / "vcs-cache").iterdir() if p.is_dir())
    (mirror / "HEAD").write_text("garbage\n")
    log = Log()
    assert prepare_repository(origin.url, tmp_path / "task", commit=sha, cfg=cfg, log=log).commit == sha
    assert log.has("is unusable") and log.has("into the cache")
    # a cache folder whose objects are gone is simply rebuilt
    shutil.rmtree(mirror / "objects")
    assert prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log()).commit == sha


def test_concurrent_prepares_of_one_repository(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    head = git(origin.work, "rev-parse", "HEAD")
    for round_ in ("cold", "warm"):
        barrier = threading.Barrier(4)
        results: dict[int, object] = {}

        def work(i: int) -> None:
            barrier.wait()
            try:
                results[i] = prepare_repository(origin.url, tmp_path / f"{round_}-{i}", cfg=cfg, log=Log())
            except Exception as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(isinstance(r, Checkout) and r.commit == head for r in results.values()), results
    mirrors = [p for p in (tmp_path / "vcs-cache").iterdir() if p.is_dir()]
    assert len(mirrors) == 1
    assert git(mirrors[0], "fsck", "--no-progress") == ""


def test_lock_timeout_falls_back_to_a_plain_clone(origin: Origin, make_cfg, tmp_path: Path) -> None:
    import fcntl

    cfg = make_cfg(vcs_cache__lock_timeout=0)
    prepare_repository(origin.url, tmp_path / "a", cfg=cfg, log=Log())
    lock = next((tmp_path / "vcs-cache").glob("*.lock"))
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        log = Log()
        checkout = prepare_repository(origin.url, tmp_path / "b", cfg=cfg, log=log)
    assert log.has("stayed locked") and log.has(f"git: cloned {origin.url} in")
    assert checkout.commit == git(origin.work, "rev-parse", "HEAD")


# ----------------------------------------------------------------------------------------- submodules


def test_submodules_are_checked_out(tmp_path: Path, cfg: Config) -> None:
    lib = Origin(tmp_path / "remotes", name="lib")
    lib.commit({"lib.py": "VALUE = 1\n"})
    lib.push()
    app = Origin(tmp_path / "remotes", name="app")
    git(app.work, "submodule", "add", "-q", lib.url, "vendor/lib")
    git(app.work, "commit", "-q", "-m", "add lib")
    app.push()
    log = Log()
    prepare_repository(app.url, tmp_path / "task", cfg=cfg, log=log)
    assert (tmp_path / "task" / "vendor" / "lib" / "lib.py").read_text() == "VALUE = 1\n"
    assert log.has("updated submodules")
    prepare_repository(app.url, tmp_path / "task2", cfg=cfg, log=Log(), submodules=False)
    assert not (tmp_path / "task2" / "vendor" / "lib" / "lib.py").exists()


# ----------------------------------------------------------------------------------------------- diffs


def _task_diff(origin: Origin, edits: dict[str, str | None]) -> str:
    """What `conveyor task create` records: `git diff HEAD` of uncommitted edits (new files staged)."""
    for name, content in edits.items():
        path = origin.work / name
        if content is None:
            git(origin.work, "rm", "-q", name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            git(origin.work, "add", "-N", name)
    diff = subprocess.run(["git", "diff", "--binary", "--src-prefix=a/", "--dst-prefix=b/", "HEAD"],
                          cwd=origin.work, capture_output=True, text=True, check=True).stdout
    git(origin.work, "reset", "-q", "--hard")
    git(origin.work, "clean", "-qfd")
    return diff


def test_diff_modifies_adds_and_deletes(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    origin.commit({"train.py": "lr = 0.1\nprint(lr)\n", "old.txt": "bye\n"})
    origin.push()
    diff = _task_diff(origin, {"train.py": "lr = 0.01\nprint(lr)\n", "pkg/new.py": "X = 1\n", "old.txt": None})
    assert looks_like_patch(diff)
    checkout = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    log = Log()
    apply_diff(checkout.path, diff, log=log)
    assert (checkout.path / "train.py").read_text() == "lr = 0.01\nprint(lr)\n"
    assert (checkout.path / "pkg" / "new.py").read_text() == "X = 1\n"
    assert not (checkout.path / "old.txt").exists()
    assert log.has("applied the uncommitted diff (3 files)")


def test_empty_diff_is_a_no_op(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    checkout = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    log = Log()
    apply_diff(checkout.path, "", log=log)
    apply_diff(checkout.path, "\n  \n", log=log)
    assert log == [] and git(checkout.path, "status", "--porcelain") == ""


def test_diff_without_trailing_newline_and_zero_context(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    origin.commit({"a.txt": "1\n2\n3\n4\n5\n6\n7\n"})
    origin.push()
    checkout = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    zero_context = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -4 +4 @@\n-4\n+four"
    apply_diff(checkout.path, zero_context, log=Log())
    assert (checkout.path / "a.txt").read_text() == "1\n2\n3\nfour\n5\n6\n7\n"


def test_diff_that_does_not_apply(origin: Origin, cfg: Config, tmp_path: Path) -> None:
    origin.commit({"train.py": "lr = 0.1\n"})
    origin.push()
    diff = _task_diff(origin, {"train.py": "lr = 0.01\n"})
    origin.commit({"train.py": "lr = 0.5\nepochs = 3\n"})
    origin.push()
    checkout = prepare_repository(origin.url, tmp_path / "task", cfg=cfg, log=Log())
    with pytest.raises(VcsError) as error:
        apply_diff(checkout.path, diff, log=Log())
    assert str(error.value).startswith(
        f"The task's uncommitted diff does not apply to commit {checkout.commit[:12]}: "
        "train.py: patch does not apply")


def test_standalone_script(tmp_path: Path) -> None:
    script = "print('hello')\r\n"
    path = write_standalone_script(tmp_path / "code", "jobs/run.py", script)
    assert path == tmp_path / "code" / "jobs" / "run.py" and path.read_bytes() == script.encode()
    assert write_standalone_script(tmp_path / "code", "", "x = 1\n").name == "untitled.py"
    shell = write_standalone_script(tmp_path / "code", "run.sh", "#!/bin/sh\necho hi\n")
    assert shell.stat().st_mode & stat.S_IXUSR
    assert not looks_like_patch(script)
    with pytest.raises(VcsError, match="outside its working folder"):
        write_standalone_script(tmp_path / "code", "../escape.py", "x")


# ---------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("url, expected", [
    ("git@github.com:org/repo.git", "https://github.com/org/repo.git"),
    ("ssh://git@github.com/org/repo.git", "https://github.com/org/repo.git"),
    ("ssh://git@github.com:2222/org/repo.git", "https://github.com/org/repo.git"),
    ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
    ("file:///srv/repo.git", "file:///srv/repo.git"),
    ("/srv/repo.git", "/srv/repo.git"),
])
def test_rewrite_ssh_to_https_with_credentials(make_cfg, url: str, expected: str) -> None:
    cfg = make_cfg()
    auth = GitAuth(user="bob", password=SECRET)
    assert rewrite_url(url, auth, cfg) == expected
    # without credentials, or with translate_ssh off, ssh stays ssh
    assert rewrite_url(url, None, cfg) == url
    assert rewrite_url(url, auth, make_cfg(translate_ssh=False)) == url


def test_rewrite_only_for_the_credentials_host(make_cfg) -> None:
    cfg = make_cfg()
    scoped = GitAuth(user="bob", password=SECRET, host="gitlab.example.com")
    assert rewrite_url("git@github.com:org/repo.git", scoped, cfg) == "git@github.com:org/repo.git"
    assert rewrite_url("git@gitlab.example.com:org/repo.git", scoped, cfg) == "https://gitlab.example.com/org/repo.git"
    extra = GitAuth(user="a", password="b", host="other", extra=[GitAuth(user="c", password="d", host="github.com")])
    assert rewrite_url("git@github.com:org/repo.git", extra, cfg) == "https://github.com/org/repo.git"
    assert extra.for_url("https://github.com/org/repo.git").user == "c"
    assert rewrite_url("git@github.com:org/repo.git", GitAuth(user="bob", password=SECRET),
                       make_cfg(translate_ssl_replacement_scheme="http")) == "http://github.com/org/repo.git"


def test_rewrite_force_ssh(make_cfg) -> None:
    cfg = make_cfg(force_git_ssh_protocol=True)
    auth = GitAuth(user="bob", password=SECRET)
    assert rewrite_url("https://github.com/org/repo.git", auth, cfg) == "ssh://git@github.com/org/repo.git"
    assert rewrite_url("https://bob:pw@github.com/org/repo.git", None, cfg) == "ssh://git@github.com/org/repo.git"
    assert rewrite_url("git@github.com:org/repo.git", auth, cfg) == "git@github.com:org/repo.git"
    forced = make_cfg(force_git_ssh_protocol=True, force_git_ssh_port=2222, force_git_ssh_user="deploy")
    assert rewrite_url("https://github.com/org/repo.git", None, forced) == "ssh://deploy@github.com:2222/org/repo.git"
    assert rewrite_url("git@github.com:org/repo.git", None, forced) == "ssh://deploy@github.com:2222/org/repo.git"
    scoped = make_cfg(force_git_ssh_protocol=True, git_host="gitlab.example.com")
    assert rewrite_url("https://github.com/org/repo.git", None, scoped) == "https://github.com/org/repo.git"
    assert rewrite_url("file:///srv/repo.git", None, cfg) == "file:///srv/repo.git"


def test_split_credentials() -> None:
    assert split_credentials(f"https://bob:{SECRET}@host/org/r.git") == (
        "https://host/org/r.git", GitAuth(user="bob", password=SECRET, host="host"))
    url, auth = split_credentials("https://tok3n@host:8443/r.git")
    assert url == "https://host:8443/r.git" and auth is not None and auth.user == "tok3n" and auth.password == ""
    assert auth.secrets() == ["tok3n"]
    assert split_credentials("ssh://git@host/r.git") == ("ssh://git@host/r.git", None)
    assert split_credentials("git@host:r.git") == ("git@host:r.git", None)
    assert SECRET not in repr(GitAuth(user="bob", password=SECRET))


def test_git_auth_from_config(make_cfg) -> None:
    cfg = make_cfg(git_user="bob", git_pass=SECRET, git_host="git.example.com")
    auth = GitAuth.from_config(cfg)
    assert (auth.user, auth.password, auth.host) == ("bob", SECRET, "git.example.com")
    assert auth.for_url("https://git.example.com/r.git") is auth
    assert auth.for_url("https://github.com/r.git") is None
    assert GitAuth.from_config(cfg, user="alice", password="pw").user == "alice"
    assert GitAuth.from_config(make_cfg()).for_url("https://github.com/r.git") is None
    prefixed = GitAuth.from_config(make_cfg(git_user="u", git_pass="p", git_host_match_prefix="https://h/team/"))
    assert prefixed.for_url("https://h/team/r.git") and not prefixed.for_url("https://h/other/r.git")


# --------------------------------------------------------------------------------------- credentials


def test_askpass_script_answers_by_prompt() -> None:
    auth = GitAuth(user="bob", password=SECRET)
    with askpass_environment(auth) as env:
        script = Path(env["GIT_ASKPASS"])
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
        assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700
        assert SECRET not in script.read_text()
        run_env = {**os.environ, **env}

        def ask(prompt: str) -> str:
            return subprocess.run([str(script), prompt], env=run_env, capture_output=True, text=True,
                                  check=True).stdout

        assert ask("Username for 'https://host': ") == "bob\n"
        assert ask("Password for 'https://bob@host': ") == f"{SECRET}\n"
    assert not script.exists() and not script.parent.exists()
    with askpass_environment(None) as env:
        assert env == {}


class _GitHttpHandler(http.server.BaseHTTPRequestHandler):
    """Smart-HTTP git behind Basic auth, through `git http-backend` (CGI)."""

    project_root: Path
    credentials: str

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.project_root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "REMOTE_USER": "bob", "REMOTE_ADDR": "127.0.0.1"}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def http_origin(origin: Origin) -> Iterator[tuple[Origin, str]]:
    handler = type("Handler", (_GitHttpHandler,), {"project_root": origin.bare.parent,
                                                   "credentials": f"bob:{SECRET}"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield origin, f"http://127.0.0.1:{server.server_address[1]}/{origin.bare.name}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def recording_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `git` first on PATH that records its argv and askpass variables, then runs the real git."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    record = tmp_path / "git-calls.txt"
    real = shutil.which("git")
    wrapper = bin_dir / "git"
    wrapper.write_text(f"""#!/bin/sh
{{ printf 'ARGV'; for a in "$@"; do printf ' %s' "$a"; done; printf '\\n'
   printf 'ASKPASS %s USERVAR %s\\n' "${{GIT_ASKPASS:-}}" "${{{ASKPASS_USER_VAR}:+set}}"; }} >> {record}
exec {real} "$@"
""")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    # a user whose git stores credentials in ~/.git-credentials: ours must not land there
    home = tmp_path / "user-home"
    home.mkdir()
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    monkeypatch.setenv("HOME", str(home))
    return record


@pytest.mark.parametrize("cache", [True, False])
def test_credentials_from_config_reach_git_only_through_askpass(http_origin, recording_git: Path, make_cfg,
                                                                tmp_path: Path, cache: bool) -> None:
    origin, url = http_origin
    cfg = make_cfg(git_user="bob", git_pass=SECRET, vcs_cache__enabled=cache)
    log = Log()
    checkout = prepare_repository(url, tmp_path / "task", cfg=cfg, log=log)
    assert checkout.commit == git(origin.work, "rev-parse", "HEAD") and checkout.repository == url
    calls = recording_git.read_text()
    assert SECRET not in calls and "bob" not in calls.replace("ASKPASS", "")
    askpass = {line.split()[1] for line in calls.splitlines() if line.startswith("ASKPASS ") and "USERVAR set" in line}
    assert askpass and not any(Path(p).exists() for p in askpass)  # used, then deleted
    lines = calls.splitlines()
    pairs = zip(lines[::2], lines[1::2], strict=False)
    local = [env for argv, env in pairs if " checkout " in argv or " rev-parse " in argv]
    assert local and all("USERVAR set" not in env for env in local)  # only commands that talk to the server
    assert SECRET not in "\n".join(log)
    assert not (Path(os.environ["HOME"]) / ".git-credentials").exists()
    for config in [tmp_path / "task" / ".git" / "config", *(tmp_path / "vcs-cache").glob("*/config")]:
        assert SECRET not in config.read_text()
    # the warm path talks to the server again (ls-remote for the branch) with the same care
    prepare_repository(url, tmp_path / "task", cfg=cfg, log=Log())
    assert SECRET not in recording_git.read_text()


def test_credentials_embedded_in_the_url_are_stripped_and_used(http_origin, recording_git: Path, cfg: Config,
                                                               tmp_path: Path) -> None:
    origin, url = http_origin
    with_secret = url.replace("http://", f"http://bob:{SECRET}@")
    log = Log()
    checkout = prepare_repository(with_secret, tmp_path / "task", cfg=cfg, log=log)
    assert checkout.repository == url
    assert git(tmp_path / "task", "remote", "get-url", "origin") == url
    assert SECRET not in recording_git.read_text() and SECRET not in "\n".join(log)


def test_wrong_credentials_fail_clearly_without_the_secret(http_origin, recording_git: Path, make_cfg,
                                                           tmp_path: Path) -> None:
    _, url = http_origin
    for cfg in (make_cfg(git_user="bob", git_pass="wrong-" + SECRET),
                make_cfg(git_user="bob", git_pass=SECRET, git_host="elsewhere.example.com")):
        with pytest.raises(VcsError) as error:
            prepare_repository(url, tmp_path / "task", cfg=cfg, log=Log())
        assert str(error.value).startswith(f"Could not clone {url}: authentication failed")
        assert SECRET not in str(error.value)


def test_a_lone_user_in_the_url_does_not_shadow_configured_credentials(http_origin, make_cfg, tmp_path: Path) -> None:
    _, url = http_origin
    cfg = make_cfg(git_user="bob", git_pass=SECRET)
    checkout = prepare_repository(url.replace("http://", "http://bob@"), tmp_path / "task", cfg=cfg, log=Log())
    assert checkout.repository == url
