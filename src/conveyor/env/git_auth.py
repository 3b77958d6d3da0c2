"""Git credentials and remote URLs: who to authenticate as, and which URL to clone.

Secrets never go on a command line, into a URL, a log line or an exception (ARCHITECTURE decision 6): git gets
them from a throw-away GIT_ASKPASS script that reads them from its environment.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from conveyor.config import Config

# scheme://... ; anything else with a colon before the first slash is scp-like (git's own rule).
_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_RE = re.compile(r"^(?:(?P<user>[^/@:]+)@)?(?P<host>[^/@:]+):(?P<path>.*)$")
_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
_HTTP_SCHEMES = ("http", "https")
_SSH_SERVICE_USERS = ("git", "hg")  # the login of a forge, not a person: dropped when ssh becomes https
# what the askpass script reads; names only, the values live in the git process's environment
ASKPASS_USER_VAR = "CONVEYOR_GIT_ASKPASS_USER"
ASKPASS_PASS_VAR = "CONVEYOR_GIT_ASKPASS_PASS"
# git calls the script with its prompt ("Username for 'https://host': ", "Password for ..."): answer by first letter
_ASKPASS_SCRIPT = f"""#!/bin/sh
case "$1" in
  [Uu]*) printf '%s\\n' "${ASKPASS_USER_VAR}" ;;
  *) printf '%s\\n' "${ASKPASS_PASS_VAR}" ;;
esac
"""
MASK = "****"
_URL_PASSWORD_RE = re.compile(r"(://[^/\s:@]*):[^/\s@]*@")


@dataclass
class GitAuth:
    """Credentials for cloning over http(s). `host` (or `match_prefix`) limits them to one server."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    match_prefix: str | None = None  # agent.git_host_match_prefix: a URL prefix instead of a host
    extra: list[GitAuth] = field(default_factory=list, repr=False)  # agent.git.extra_credentials

    @classmethod
    def from_config(cls, cfg: Config, user: str | None = None, password: str | None = None) -> GitAuth:
        """agent.git_user/git_pass/git_host (and extra_credentials); --git-user/--git-pass override the config."""
        extra = [cls(user=_text(item.get("user")), password=_text(item.get("pass")), host=_text(item.get("host")))
                 for item in (cfg.get("agent.git.extra_credentials") or []) if isinstance(item, dict)]
        return cls(user=user or _text(cfg.get("agent.git_user")),
                   password=password or _text(cfg.get("agent.git_pass")),
                   host=_text(cfg.get("agent.git_host")),
                   match_prefix=_text(cfg.get("agent.git_host_match_prefix")),
                   extra=extra)

    @property
    def usable(self) -> bool:
        # a token given as the URL's user comes with password "": still usable
        return bool(self.user) and self.password is not None

    def applies_to(self, url: str) -> bool:
        """Whether these credentials (not the extras) may be sent to the server of `url`."""
        if not self.usable or is_local(url):
            return False
        if self.match_prefix:
            return url.startswith(self.match_prefix)
        if self.host:
            host, port = url_host(url)
            wanted = self.host.lower().rstrip("/")
            return wanted in (host, f"{host}:{port}" if port else host)
        return True

    def for_url(self, url: str) -> GitAuth | None:
        """The credentials to use for `url`: these, else the first matching extra; None when none applies."""
        for candidate in (self, *self.extra):
            if candidate.applies_to(url):
                return candidate
        return None

    def secrets(self) -> list[str]:
        """What must never be shown: the password, and the user when it is a token given without one."""
        return [s for s in (self.password, None if self.password else self.user) if s]


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def is_local(url: str) -> bool:
    """A file:// URL or a filesystem path: no server, no credentials, never rewritten."""
    match = _SCHEME_RE.match(url)
    if match:
        return match.group("scheme").lower() == "file"
    return not _SCP_RE.match(url)


def url_host(url: str) -> tuple[str, int | None]:
    """(lower-case host, port) of a remote URL, scp-like included; ("", None) for a local one."""
    if is_local(url):
        return "", None
    if _SCHEME_RE.match(url):
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        return (parts.hostname or "").lower(), port
    match = _SCP_RE.match(url)
    return (match.group("host").lower() if match else ""), None


def split_credentials(url: str) -> tuple[str, GitAuth | None]:
    """The URL without user:password, and those as GitAuth (for that host only). ssh's login user is kept."""
    if not _SCHEME_RE.match(url):
        return url, None  # scp-like git@host:path carries a login, never a secret
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, hostport = parts.netloc.rsplit("@", 1)
    user, sep, password = userinfo.partition(":")
    scheme = parts.scheme.lower()
    if scheme in _SSH_SCHEMES and not sep:
        return url, None
    keep = f"{user}@{hostport}" if scheme in _SSH_SCHEMES else hostport
    clean = urlunsplit(parts._replace(netloc=keep))
    if scheme not in _HTTP_SCHEMES or not user:
        return clean, None
    host = (parts.hostname or "").lower()
    return clean, GitAuth(user=unquote(user), password=unquote(password) if sep else "", host=host)


def rewrite_url(url: str, auth: GitAuth | None, cfg: Config) -> str:
    """The URL to clone, as the reference agent chooses it (clearml-agent.md 3.2); never carries a secret.

    force_git_ssh_protocol: https → ssh://<force_git_ssh_user or git>@host[:force_git_ssh_port]/path (only on
    agent.git_host when set); ssh URLs get the forced user/port. Otherwise, with translate_ssh and credentials for
    the host: git@host:path and ssh://git@host/path → <translate_ssl_replacement_scheme>://host/path.
    """
    url, _ = split_credentials(url.strip())
    if is_local(url):
        return url
    host, _port = url_host(url)
    if cfg.get("agent.force_git_ssh_protocol"):
        git_host = (_text(cfg.get("agent.git_host")) or "").lower()
        if git_host and git_host != host:
            return url
        return _force_ssh(url, cfg)
    if cfg.get("agent.translate_ssh") and _is_ssh(url):
        https = _ssh_to_https(url, str(cfg.get("agent.translate_ssl_replacement_scheme") or "https"))
        if auth is not None and auth.for_url(https) is not None:
            return https
    return url


def _is_ssh(url: str) -> bool:
    match = _SCHEME_RE.match(url)
    return match.group("scheme").lower() in _SSH_SCHEMES if match else bool(_SCP_RE.match(url))


def _ssh_parts(url: str) -> tuple[str | None, str, int | None, str]:
    """(user, host, port, path with a leading /) of an ssh URL in either syntax."""
    if _SCHEME_RE.match(url):
        parts = urlsplit(url)
        return parts.username, parts.hostname or "", parts.port, parts.path
    match = _SCP_RE.match(url)
    assert match is not None
    return match.group("user"), match.group("host"), None, "/" + match.group("path").lstrip("/")


def _ssh_to_https(url: str, scheme: str) -> str:
    user, host, _port, path = _ssh_parts(url)
    # a person's login stays (the reference keeps it); the forge's service user does not
    login = f"{quote(user, safe='')}@" if user and user.lower() not in _SSH_SERVICE_USERS else ""
    return f"{scheme}://{login}{host}{path}"


def _force_ssh(url: str, cfg: Config) -> str:
    port = cfg.get("agent.force_git_ssh_port")
    forced_user = _text(cfg.get("agent.force_git_ssh_user"))
    match = _SCHEME_RE.match(url)
    scheme = match.group("scheme").lower() if match else "scp"
    if scheme == "https":
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
        user = forced_user or "git"
    elif _is_ssh(url) and (port or forced_user):
        old_user, host, old_port, path = _ssh_parts(url)
        user = forced_user or old_user or "git"
        port = port or old_port
    else:
        return url  # http, or ssh without anything forced: as it is
    return f"ssh://{user}@{host}{f':{int(port)}' if port else ''}{path}"


def submodule_url_config(url: str, original: str) -> list[str]:
    """`git -c` settings that make submodules on the same host follow an ssh → https translation."""
    if url == original or not _is_ssh(original) or _is_ssh(url):
        return []
    host, _ = url_host(url)
    base = url.split(host, 1)[0] + host + "/"
    return [f"url.{base}.insteadOf=git@{host}:", f"url.{base}.insteadOf=ssh://git@{host}/"]


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret and every URL password replaced by ****."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
        quoted = quote(secret, safe="")
        if quoted != secret:
            text = text.replace(quoted, MASK)
    return _URL_PASSWORD_RE.sub(rf"\1:{MASK}@", text)


@contextmanager
def askpass_environment(auth: GitAuth | None) -> Iterator[dict[str, str]]:
    """Environment additions that let git authenticate with `auth`, through a private GIT_ASKPASS script.

    The script holds no secret: it prints the values of two variables that only the git process (and its
    children) get. The directory is private (mkdtemp: 0700) and removed on exit. Without credentials nothing is
    added, so ssh keys and the user's own credential helpers work as usual.
    """
    if auth is None or not auth.usable:
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="conveyor-askpass-"))
    try:
        script = folder / "askpass.sh"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRWXU)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_ASKPASS_SCRIPT)
        yield {"GIT_ASKPASS": str(script), ASKPASS_USER_VAR: auth.user or "", ASKPASS_PASS_VAR: auth.password or ""}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
