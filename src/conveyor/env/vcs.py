"""The git side of a task's environment: clone (through a cache of bare mirrors), check out, apply the diff.

Cache layout (agent.vcs_cache.path): `<repo-name>.<hash of the normalized URL>/` is a bare mirror of the remote's
branches and tags, `<same>.lock` its flock. A task's working copy is a local `git clone` of the mirror (objects
hard-linked where possible, so it is quick and still a normal, independent repository) whose `origin` is then
pointed back at the real URL. When the requested commit (or tag) is already in the mirror, nothing goes over the
network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import filelock

from conveyor.config import Config, load_config
from conveyor.env.git_auth import (
    GitAuth,
    askpass_environment,
    is_local,
    rewrite_url,
    split_credentials,
    submodule_url_config,
)
from conveyor.env.git_cmd import Git, GitFailed, GitNotFound
from conveyor.errors import TaskFailure
from conveyor.progress import Log

__all__ = ["Checkout", "GitAuth", "VcsError", "apply_diff", "looks_like_patch", "prepare_repository",
           "rewrite_url", "write_standalone_script"]

logger = logging.getLogger(__name__)  # where progress goes when a caller passes no `log`
_FULL_SHA_RE = re.compile(r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$")
_LOCK_POLL_SEC = 0.02
DEFAULT_SCRIPT_NAME = "untitled.py"  # the reference's name for a standalone script without an entry point
# a hint per kind of clone failure, matched on git's (LC_ALL=C) stderr
_CLONE_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("authentication failed", "could not read username", "could not read password", "permission denied",
      "invalid username or password", "http basic: access denied", "returned error: 401",
      "returned error: 403"),
     "authentication failed — check agent.git_user/git_pass (or --git-user/--git-pass) or the ssh key"),
    (("could not resolve host", "connection refused", "connection timed out", "network is unreachable",
      "failed to connect", "no route to host", "operation timed out"),
     "the server is not reachable — check the URL and the network"),
)
_NOT_FOUND = "repository not found — check the URL and credentials"


class VcsError(TaskFailure):
    """The task's code could not be prepared; the message says what failed and what to do, and holds no secret."""


@dataclass
class Checkout:
    path: Path
    commit: str  # the checked-out HEAD, full sha
    branch: str | None
    repository: str  # the URL as cloned (after any rewrite), never with credentials


@dataclass(frozen=True)
class _Want:
    """What to check out, in the reference's precedence: commit, else tag, else branch, else the default branch."""

    commit: str | None
    tag: str | None
    branch: str | None

    @classmethod
    def of(cls, commit: str | None, tag: str | None, branch: str | None) -> _Want:
        return cls(commit=(commit or "").strip() or None, tag=_short_tag(tag), branch=_short_branch(branch))

    def describe(self) -> str:
        if self.commit:
            return f"commit {self.commit[:12]}" + (f", branch {self.branch}" if self.branch else "")
        if self.tag:
            return f"tag {self.tag}"
        return f"branch {self.branch}" if self.branch else "the default branch"


@dataclass(frozen=True)
class _Known:
    """What the task wants as the mirror holds it: the full commit sha and, for a branch, its name."""

    sha: str
    branch: str | None = None


def _short_branch(branch: str | None) -> str | None:
    name = (branch or "").strip()
    # tasks record "main", "refs/heads/main" or the upstream "origin/main": all mean the remote's main
    for prefix in ("refs/heads/", "refs/remotes/origin/", "origin/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name or None


def _short_tag(tag: str | None) -> str | None:
    name = (tag or "").strip()
    return name.removeprefix("refs/tags/") or None


# ----------------------------------------------------------------------------------------------- public API


def prepare_repository(repository: str, dest: Path, *, branch: str | None = None, tag: str | None = None,
                       commit: str | None = None, auth: GitAuth | None = None, cfg: Config | None = None,
                       submodules: bool = True, log: Log = logger.info) -> Checkout:
    """Make `dest` a working copy of `repository` at the requested revision; VcsError when that cannot be done."""
    cfg = cfg if cfg is not None else load_config()
    original, embedded = split_credentials(repository.strip())
    if not original:
        raise VcsError("The task has no repository URL — set one, or run the task as a standalone script")
    original = _absolute_if_path(original)
    auth = _choose_auth(embedded, auth if auth is not None else GitAuth.from_config(cfg), original)
    url = rewrite_url(original, auth, cfg)
    if url != original:
        log(f"git: cloning {url} instead of {original}")
    creds = auth.for_url(url) if auth is not None else None
    want = _Want.of(commit, tag, branch)
    dest = Path(dest).expanduser().absolute()
    with askpass_environment(creds) as env:
        git = _session(env, creds, url)
        _clear_dest(dest)
        sha, checked_branch = _clone(git, url, dest, want, cfg, log)
        if submodules and (dest / ".gitmodules").is_file():
            _update_submodules(git, dest, url, submodule_url_config(url, original), log)
    return Checkout(path=dest, commit=sha, branch=checked_branch, repository=url)


def _choose_auth(embedded: GitAuth | None, configured: GitAuth, url: str) -> GitAuth:
    """user:password in the task's URL win (given for exactly this repository, as the reference does); a lone
    user (a token, or just a login as Bitbucket URLs carry) only when no configured credentials apply."""
    if embedded is None:
        return configured
    if embedded.password or configured.for_url(url) is None:
        return embedded
    return configured


def looks_like_patch(diff: str) -> bool:
    """Whether a task's `script.diff` is a patch (else it is the whole script of a task without a repository)."""
    head = diff.lstrip().lower()
    return head.startswith(("diff ", "submodule", "--- "))


def apply_diff(repo_dir: Path, diff: str, log: Log = logger.info) -> None:
    """Apply a task's uncommitted changes (`git diff HEAD` output: edits, new and deleted files) to `repo_dir`."""
    if not diff.strip():
        return
    text = diff if diff.endswith("\n") else diff + "\n"
    started = time.monotonic()
    git = _session({}, None, "")
    repo_dir = Path(repo_dir)
    if not repo_dir.is_dir():
        raise VcsError(f"Cannot apply the task's uncommitted diff: {repo_dir} does not exist")
    first = git.run("apply", "--whitespace=nowarn", cwd=repo_dir, input=text, check=False)
    if first.returncode != 0:
        # hunk counts off (hand-edited diff) or zero-context hunks (diff -U0), which the reference accepts
        retry = git.run("apply", "--whitespace=nowarn", "--recount", "--unidiff-zero", cwd=repo_dir, input=text,
                        check=False)
        if retry.returncode != 0:
            raise VcsError(_diff_error(git, repo_dir, first.stderr))
    files = len(re.findall(r"^diff --git ", text, flags=re.MULTILINE)) or "?"
    log(f"git: applied the uncommitted diff ({files} files) in {_since(started)}")


def write_standalone_script(dest_dir: Path, entry_point: str, script_text: str) -> Path:
    """Write the script of a task without a repository (its `diff` is the script) to dest_dir/entry_point."""
    relative = Path((entry_point or "").strip() or DEFAULT_SCRIPT_NAME)
    if relative.is_absolute() or ".." in relative.parts:
        raise VcsError(f"The task's entry point {entry_point!r} points outside its working folder — "
                       "give a relative file name such as script.py")
    path = Path(dest_dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script_text, encoding="utf-8", newline="")
    if script_text.startswith("#!"):
        path.chmod(0o755)
    return path


# ---------------------------------------------------------------------------------------------- the session


def _session(env: dict[str, str], creds: GitAuth | None, url: str) -> Git:
    config: list[str] = []
    if creds is not None:
        # an empty helper list: our credentials must not be stored by the user's helper (e.g. ~/.git-credentials)
        config.append("credential.helper=")
    if url and is_local(url):
        # file:// submodules of a local repository (git >= 2.38.1 refuses them by default)
        config.append("protocol.file.allow=always")
    try:
        return Git(env, creds.secrets() if creds else (), config)
    except GitNotFound:
        raise VcsError("git is not installed (or not on PATH) on this machine — install git "
                       "(e.g. `apt-get install git`) to run tasks from a repository") from None


def _absolute_if_path(url: str) -> str:
    if is_local(url) and not url.lower().startswith("file://"):
        return str(Path(url).expanduser().absolute())
    return url


def _clear_dest(dest: Path) -> None:
    """A task's working copy is rebuilt each time; anything there that is not one is left alone."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        return
    if dest.is_dir() and not any(dest.iterdir()):
        return
    if dest.is_dir() and (dest / ".git").exists():
        shutil.rmtree(dest)
        return
    raise VcsError(f"{dest} exists and is not a git working copy — remove it or choose another folder")


# ------------------------------------------------------------------------------------------------- cloning


def _clone(git: Git, url: str, dest: Path, want: _Want, cfg: Config, log: Log) -> tuple[str, str | None]:
    """Make `dest` a checkout of what the task wants, through the cache when it is on; (HEAD sha, branch)."""
    cache_root = cfg.get_path("agent.vcs_cache.path")
    if cfg.get("agent.vcs_cache.enabled") and cache_root is not None:
        cache_root.mkdir(parents=True, exist_ok=True)
        mirror = cache_root / _mirror_name(url)
        lock_timeout = float(cfg.get("agent.vcs_cache.lock_timeout"))
        with _file_lock(mirror.with_name(mirror.name + ".lock"), lock_timeout) as held:
            if held:
                return _clone_cached(git, url, mirror, dest, want, cfg, log)
        log(f"git: the cache of {url} stayed locked by another task for {lock_timeout:g} s; cloning without it")
    _clone_plain(git, url, dest, log)
    try:
        return _checkout(git, dest, url, want, may_fetch=True, log=log)
    except GitFailed as failed:
        raise VcsError(f"Could not check out {want.describe()} of {url}: {failed.last_line}") from None


def _clone_cached(git: Git, url: str, mirror: Path, dest: Path, want: _Want, cfg: Config,
                  log: Log) -> tuple[str, str | None]:
    """Under the mirror's lock: refresh it when needed, copy it to `dest`, check out there."""
    cold = not _is_mirror(mirror)
    if cold:
        _build_mirror(git, url, mirror, log)
        _fetch_lost_commit(git, mirror, want)
    try:
        known = None if cold else _refresh_mirror(git, url, mirror, want, cfg, log)
        _copy_from_mirror(git, url, mirror, dest, log)
        return _checkout(git, dest, url, want, may_fetch=False, log=log, known=known)
    except GitFailed as failed:
        if cold:
            raise VcsError(f"Could not check out {want.describe()} of {url} from the cache {mirror}: "
                           f"{failed.last_line}") from None
        # a broken mirror, or a fetch that failed: clone it once more (an unreachable remote fails here too)
        log(f"git: the cache of {url} is unusable ({failed.last_line}); cloning it again")
    _build_mirror(git, url, mirror, log)
    _fetch_lost_commit(git, mirror, want)
    try:
        _copy_from_mirror(git, url, mirror, dest, log)
        return _checkout(git, dest, url, want, may_fetch=False, log=log)
    except GitFailed as failed:
        raise VcsError(f"Could not check out {want.describe()} of {url} from the cache {mirror}: "
                       f"{failed.last_line}") from None


def _clone_plain(git: Git, url: str, dest: Path, log: Log) -> None:
    started = time.monotonic()
    try:
        git.run("clone", "--no-checkout", "--quiet", "--", url, str(dest), remote=True)
    except GitFailed as failed:
        raise VcsError(_clone_error(url, failed)) from None
    log(f"git: cloned {url} in {_since(started)}")


def _build_mirror(git: Git, url: str, mirror: Path, log: Log) -> None:
    """Clone a fresh bare mirror beside `mirror` and swap it in; the old one stays until the new one is whole."""
    for leftover in mirror.parent.glob(f"{mirror.name}.tmp-*"):
        _remove(leftover)  # from an agent that died while building (we hold the lock)
    fresh = mirror.with_name(f"{mirror.name}.tmp-{os.getpid()}")
    started = time.monotonic()
    try:
        git.run("clone", "--bare", "--quiet", "--", url, str(fresh), remote=True)
        # branches as branches (a bare clone has no fetch refspec), tags come with --tags; gc inside our lock
        git.run("config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*", cwd=fresh)
        git.run("config", "gc.autoDetach", "false", cwd=fresh)
    except GitFailed as failed:
        _remove(fresh)
        raise VcsError(_clone_error(url, failed)) from None
    if mirror.exists():
        trash = mirror.with_name(f"{mirror.name}.tmp-old-{os.getpid()}")
        os.rename(mirror, trash)
        _remove(trash)
    os.rename(fresh, mirror)
    log(f"git: cloned {url} into the cache in {_since(started)}")


def _refresh_mirror(git: Git, url: str, mirror: Path, want: _Want, cfg: Config, log: Log) -> _Known | None:
    """Fetch into the mirror only when it may lack what the task wants; what it wants when the mirror held it
    without a fetch (a copy of the mirror has it too: the checkout needs no git call to find it)."""
    if want.commit:
        sha = _commit_sha(git, mirror, want.commit)
        if sha:
            log(f"git: commit {want.commit[:12]} is in the cache of {url}; no fetch")
            return _Known(sha)
        _fetch(git, url, mirror, cfg, log)
        _fetch_lost_commit(git, mirror, want)
        if _commit_sha(git, mirror, want.commit) is None:
            _check_mirror(git, mirror)  # "not found" must mean not on the remote, not a broken cache
        return None
    if want.tag:
        sha = _commit_sha(git, mirror, f"refs/tags/{want.tag}")
        if sha:
            log(f"git: tag {want.tag} is in the cache of {url}; no fetch")
            return _Known(sha)
        _fetch(git, url, mirror, cfg, log)
        _check_mirror(git, mirror)
        return None
    # a branch moves: ask the remote where it is now (one cheap round trip), fetch only when that is new
    name, sha = _remote_branch(git, url, mirror, want.branch)
    if want.branch is None and (mirror / "HEAD").read_text().strip() != f"ref: refs/heads/{name}":
        git.run("symbolic-ref", "HEAD", f"refs/heads/{name}", cwd=mirror)  # the remote changed its default
    # git refuses to point a branch at a commit it does not have: the update is the question "is it here?" too
    if git.run("update-ref", f"refs/heads/{name}", sha, cwd=mirror, check=False).returncode == 0:
        log(f"git: branch {name} ({sha[:7]}) is in the cache of {url}; no fetch")
        return _Known(sha, name)
    _fetch(git, url, mirror, cfg, log)
    return None


def _fetch_lost_commit(git: Git, mirror: Path, want: _Want) -> None:
    """A commit no branch or tag holds (force-push, pull-request ref): servers usually serve it by its sha."""
    if want.commit and _FULL_SHA_RE.match(want.commit) and _commit_sha(git, mirror, want.commit) is None:
        # under a ref of its own, so that gc keeps it (fetches prune only branches and tags)
        git.run("fetch", "--quiet", "origin", f"+{want.commit}:refs/conveyor/commits/{want.commit}", cwd=mirror,
                check=False, remote=True)


def _remote_branch(git: Git, url: str, mirror: Path, branch: str | None) -> tuple[str, str]:
    """(branch name, sha) on the remote; the default branch when `branch` is None."""
    if branch is None:
        out = git.run("ls-remote", "--symref", "--", url, "HEAD", cwd=mirror, remote=True).stdout
        match = re.search(r"^ref: refs/heads/(\S+)\s+HEAD$", out, flags=re.MULTILINE)
        sha = re.search(r"^([0-9a-f]{40,64})\s+HEAD$", out, flags=re.MULTILINE)
        if not match or not sha:
            raise VcsError(f"The repository {url} has no default branch (is it empty?) — "
                           "push a branch, or give the task a branch")
        name, commit = match.group(1), sha.group(1)
    else:
        out = git.run("ls-remote", "--heads", "--", url, f"refs/heads/{branch}", cwd=mirror, remote=True).stdout
        shas = [line.split()[0] for line in out.splitlines() if line.split()[1:] == [f"refs/heads/{branch}"]]
        if not shas:
            raise VcsError(_missing("Branch", branch, url))
        name, commit = branch, shas[0]
    return name, commit


def _fetch(git: Git, url: str, mirror: Path, cfg: Config, log: Log) -> None:
    started = time.monotonic()
    if git.ok("config", "remote.origin.url", cwd=mirror) != url:
        git.run("remote", "set-url", "origin", url, cwd=mirror)
    args = [str(a) for a in (cfg.get("agent.git_fetch_args") or [])]
    # --prune: a branch deleted upstream goes; --force: a tag moved upstream is taken, not a fetch failure
    git.run("fetch", "--quiet", "--prune", "--force", *args, cwd=mirror, remote=True)
    log(f"git: fetched mirror of {url} in {_since(started)}")


def _copy_from_mirror(git: Git, url: str, mirror: Path, dest: Path, log: Log) -> None:
    started = time.monotonic()
    _remove(dest)
    # no explicit --local: a local path clones locally anyway, and only without the flag does git fall back to
    # copying when hard links fail (the cache on another filesystem or mount, as in a container)
    git.run("clone", "--no-checkout", "--quiet", "--", str(mirror), str(dest))
    git.run("config", "remote.origin.url", url, cwd=dest)
    log(f"git: copied {url} from the cache in {_since(started)}")


# ------------------------------------------------------------------------------------------------ checkout


def _checkout(git: Git, dest: Path, url: str, want: _Want, *, may_fetch: bool, log: Log,
              known: _Known | None = None) -> tuple[str, str | None]:
    """Check out what the task wants in `dest` (refs under origin/); (HEAD sha, branch). `known`: the commit (and
    branch) `dest` was just copied with, so that no git call has to find them again."""
    started = time.monotonic()
    branch = want.branch
    if want.commit:
        sha = known.sha if known else _resolve_commit(git, dest, want.commit, may_fetch)
        if sha is None:
            raise VcsError(f"Commit '{want.commit}' not found in {url} — was it pushed? "
                           "Push it, or give the task a commit that is on the remote")
        git.run("checkout", "--force", "--quiet", "--detach", sha, cwd=dest)
    elif want.tag:
        sha = known.sha if known else _commit_sha(git, dest, f"refs/tags/{want.tag}")
        if sha is None:
            raise VcsError(_missing("Tag", want.tag, url))
        git.run("checkout", "--force", "--quiet", "--detach", sha, cwd=dest)
    else:
        branch = branch or (known.branch if known else None) or _default_branch(git, dest, url)
        sha = known.sha if known else _commit_sha(git, dest, f"refs/remotes/origin/{branch}")
        if sha is None:
            raise VcsError(_missing("Branch", branch, url))
        git.run("checkout", "--force", "--quiet", "-B", branch, f"origin/{branch}", cwd=dest)
    what = f"branch {branch}" if branch and not (want.commit or want.tag) else want.describe()
    log(f"git: checked out {sha[:7]} ({what}) in {_since(started)}")
    return sha, branch


def _resolve_commit(git: Git, dest: Path, commit: str, may_fetch: bool) -> str | None:
    sha = _commit_sha(git, dest, commit)
    if sha is None and may_fetch and _FULL_SHA_RE.match(commit):
        git.run("fetch", "--quiet", "origin", commit, cwd=dest, check=False, remote=True)
        sha = _commit_sha(git, dest, commit)
    return sha


def _default_branch(git: Git, dest: Path, url: str) -> str:
    head = git.ok("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD", cwd=dest)
    if head and head.startswith("refs/remotes/origin/"):
        return head.removeprefix("refs/remotes/origin/")
    for name in ("master", "main"):  # the reference's guesses when the remote names no default
        if git.ok("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{name}", cwd=dest):
            return name
    raise VcsError(f"The repository {url} has no default branch (is it empty?) — push a branch, "
                   "or give the task a branch")


def _update_submodules(git: Git, dest: Path, url: str, config: list[str], log: Log) -> None:
    started = time.monotonic()
    try:
        git.run("submodule", "update", "--init", "--recursive", "--quiet", cwd=dest, config=config,
                remote=True)
    except GitFailed as failed:
        raise VcsError(f"Could not check out the submodules of {url}: {failed.last_line} — check the URLs in "
                       ".gitmodules and that the agent's credentials reach them") from None
    log(f"git: updated submodules in {_since(started)}")


# ------------------------------------------------------------------------------------------------- helpers


def _commit_sha(git: Git, repo: Path, rev: str) -> str | None:
    """The full sha of the commit `rev` (a sha, abbreviated or not, or a ref) names in `repo`; None when it has none."""
    return git.ok("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo)


def _check_mirror(git: Git, mirror: Path) -> None:
    """GitFailed when a branch or tag of the mirror points at an object it cannot read."""
    git.run("rev-list", "--no-walk", "--all", cwd=mirror)


def _is_mirror(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _mirror_name(url: str) -> str:
    normalized = _normalize_url(url)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", normalized.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]) or "repo"
    return f"{name[:60]}.{hashlib.sha256(normalized.encode()).hexdigest()[:16]}"


def _normalize_url(url: str) -> str:
    """One cache entry per repository however its URL is spelled (case of the host, trailing / or .git)."""
    if is_local(url):
        path = urlsplit(url).path if url.lower().startswith("file://") else url
        normalized = "file://" + str(Path(path).absolute())
    elif "://" in url:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        netloc[-1] = netloc[-1].lower()
        normalized = f"{parts.scheme.lower()}://{'@'.join(netloc)}{parts.path}"
    else:
        login, _, path = url.partition(":")
        user, _, host = login.rpartition("@")
        normalized = f"ssh://{user + '@' if user else ''}{host.lower()}/{path.lstrip('/')}"
    normalized = normalized.rstrip("/")
    return normalized.removesuffix(".git")


def _clone_error(url: str, failed: GitFailed) -> str:
    detail = failed.detail.lower()
    reason = next((hint for needles, hint in _CLONE_FAILURES if any(n in detail for n in needles)), _NOT_FOUND)
    return f"Could not clone {url}: {reason} (git: {failed.last_line})"


def _missing(kind: str, name: str, url: str) -> str:
    return f"{kind} '{name}' not found in {url} — check the task's {kind.lower()} (was it pushed?)"


def _diff_error(git: Git, repo_dir: Path, stderr: str) -> str:
    errors = [line.removeprefix("error: ").strip() for line in stderr.splitlines() if line.startswith("error: ")]
    # "error: patch failed: a.py:3" names the hunk; "error: a.py: patch does not apply" is the verdict
    verdicts = [e for e in errors if not e.startswith("patch failed:")]
    detail = git.scrub((verdicts or errors or [stderr.strip() or "git apply failed"])[0])
    head = git.ok("rev-parse", "HEAD", cwd=repo_dir)
    where = f"commit {head[:12]}" if head else str(repo_dir)
    return (f"The task's uncommitted diff does not apply to {where}: {detail} — the diff was recorded against "
            "another commit; check the task's commit and diff")


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[bool]:
    """An exclusive flock (a lock object per call, so threads of one process exclude each other too); False on
    timeout. The lock file stays: deleting one that others may wait on would let two holders in."""
    lock = filelock.FileLock(path, mode=0o600)
    try:
        lock.acquire(timeout=timeout, poll_interval=_LOCK_POLL_SEC)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.2f} s"
