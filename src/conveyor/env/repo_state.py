"""The state of a local git working copy, as a task records it: remote URL, branch, commit, uncommitted diff.

`conveyor task create --repo .` uses it (as `clearml-task` does) so that an agent elsewhere can rebuild exactly
the code the user has: clone the URL, check out the commit, apply the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from conveyor.errors import TaskFailure

# A URL git understands without a local path: scheme://... or scp-like user@host:path.
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_RE = re.compile(r"^[^/\s:@]+@[^/\s:]+:")
GIT_TIMEOUT_SEC = 60  # a local git command that takes longer is stuck (a lock, a prompt)


class RepoError(TaskFailure):
    """The path is no usable git working copy; the message says what to do."""


@dataclass(frozen=True)
class RepoState:
    url: str  # what an agent clones: the remote's URL, or file://<root> when the repo has no remote
    branch: str  # "" on a detached HEAD
    commit: str
    diff: str  # `git diff HEAD`: staged and unstaged changes of tracked files
    root: Path
    untracked: list[str] = field(default_factory=list)  # not in the diff: the agent will not get them
    remote: str = ""  # name of the remote `url` came from; "" when none
    pushed: bool = True  # whether a remote-tracking branch holds the commit (always True without a remote)


def is_remote_url(value: str) -> bool:
    """Whether `value` names a repository by URL (https://, ssh://, file://, git@host:path) rather than a path."""
    return bool(_URL_RE.match(value) or _SCP_RE.match(value))


def strip_credentials(url: str) -> str:
    """user:password@ never goes into a task (ARCHITECTURE decision 6); ssh's `git@` user is kept."""
    if not _URL_RE.match(url):
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    if parts.scheme in ("ssh", "git+ssh") and ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=host))


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        raise RepoError("git is not installed (or not on PATH) — install git to record a local repository")
    # Raw paths and no colour whatever the user's git config says.
    cmd = [git, "-c", "core.quotepath=off", "-c", "color.ui=never", "-C", str(root), *args]
    try:
        # A file in another encoding must not stop the recording: its bytes become U+FFFD in the diff.
        result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=GIT_TIMEOUT_SEC,
                                env={**_clean_env(), "GIT_TERMINAL_PROMPT": "0"})
    except subprocess.TimeoutExpired:
        raise RepoError(f"`git {' '.join(args)}` in {root} did not finish in {GIT_TIMEOUT_SEC} s "
                        "— is another git process holding a lock there?") from None
    if check and result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RepoError(f"`git {' '.join(args)}` failed in {root}: {message}")
    return result


def _clean_env() -> dict[str, str]:
    # GIT_DIR and friends from an enclosing hook or shell would point git at another repository.
    return {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}


def find_root(path: Path) -> Path:
    """The top of the working copy holding `path`; RepoError when there is none."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise RepoError(f"{path} does not exist — give --repo a local git working copy or a git URL")
    start = path if path.is_dir() else path.parent
    result = _git(start, "rev-parse", "--show-toplevel", check=False)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.strip().splitlines() if line.strip()] or [""]
        if "not a git repository" not in lines[0].lower():  # e.g. "dubious ownership", whose advice is its last line
            advice = f" — {lines[-1]}" if len(lines) > 1 else ""
            raise RepoError(f"git cannot read the repository at {path}: {lines[0]}{advice}")
        raise RepoError(f"{path} is not inside a git working copy — run `git init` and commit your code, "
                        "or give --repo a git URL")
    return Path(result.stdout.strip()).resolve()


def _branch(root: Path) -> str:
    result = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def _remote(root: Path, branch: str) -> str:
    """The remote the branch tracks, else `origin`, else the first one; "" when the repo has none."""
    remotes = _git(root, "remote").stdout.split()
    if branch:
        tracked = _git(root, "config", "--get", f"branch.{branch}.remote", check=False).stdout.strip()
        if tracked in remotes:
            return tracked
    if "origin" in remotes:
        return "origin"
    return remotes[0] if remotes else ""


def _remote_url(root: Path, remote: str) -> str:
    url = _git(root, "remote", "get-url", remote).stdout.strip()
    if is_remote_url(url):
        return strip_credentials(url)
    # A remote given as a local path (often relative): make it a URL an agent on this machine can clone.
    return (root / url).resolve().as_uri()


def _pushed(root: Path, remote: str, commit: str) -> bool:
    refs = _git(root, "branch", "--remotes", "--contains", commit, check=False).stdout.split()
    return any(ref.startswith(f"{remote}/") for ref in refs)


def untracked_files(root: Path) -> list[str]:
    out = _git(root, "ls-files", "--others", "--exclude-standard", "-z").stdout
    return [name for name in out.split("\0") if name]


def is_tracked(root: Path, relative: str) -> bool:
    """Whether git knows the file (committed or staged): only those reach the agent."""
    return bool(_git(root, "ls-files", "--", relative).stdout.strip())


def inspect_local_repo(path: str | Path) -> RepoState:
    """Record the working copy holding `path`. RepoError (with what to do) when it cannot be recorded."""
    root = find_root(Path(path))
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    if head.returncode != 0:
        raise RepoError(f"the git repository {root} has no commit yet — commit your code first "
                        "(an agent checks out a commit and applies the uncommitted changes on top)")
    commit = head.stdout.strip()
    branch = _branch(root)
    remote = _remote(root, branch)
    url = _remote_url(root, remote) if remote else root.as_uri()
    # `git diff HEAD` holds staged and unstaged changes; fixed a/ b/ prefixes (whatever diff.noprefix or
    # diff.mnemonicPrefix say) and --binary, so that the agent's `git apply` takes it as it is.
    diff = _git(root, "diff", "--no-ext-diff", "--no-color", "--binary", "--src-prefix=a/", "--dst-prefix=b/",
                "HEAD").stdout
    return RepoState(url=url, branch=branch, commit=commit, diff=diff, root=root, untracked=untracked_files(root),
                     remote=remote, pushed=_pushed(root, remote, commit) if remote else True)


def locate_script(root: Path, script: str, working_dir: str = ".", base: Path | None = None) -> str:
    """`script` as a posix path relative to the repository root, checked to exist and to be known to git.

    It may be given relative to the root (as clearml-task takes it), to the working dir, to `base` (the folder
    given as --repo), or absolute inside the repository."""
    if script.startswith("-m "):  # a module: nothing on disk to check
        return script
    given = Path(script).expanduser()
    candidates = [given] if given.is_absolute() else [root / given, root / working_dir / given]
    if base is not None and not given.is_absolute():
        candidates.append(base / given)
    found = next((c.resolve() for c in candidates if c.is_file()), None)
    if found is None:
        raise RepoError(f"--script {script}: no such file in the repository {root} — give the entry point's path "
                        "relative to the repository root, e.g. --script src/train.py")
    try:
        relative = found.relative_to(root).as_posix()
    except ValueError:
        raise RepoError(f"--script {script} is outside the repository {root} — the agent only gets the "
                        "repository's files; move the script into it") from None
    if not is_tracked(root, relative):
        raise RepoError(f"--script {relative} is not tracked by git, so the agent would not get it — "
                        f"`git add {relative}` (staged changes are recorded, no commit needed)")
    return relative


def check_working_dir(root: Path, working_dir: str) -> None:
    if not (root / working_dir).is_dir():
        raise RepoError(f"--working-dir {working_dir}: no such folder in the repository {root} — give a folder "
                        "relative to the repository root")
