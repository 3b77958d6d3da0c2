"""Requirement lists as the clearml SDK records them on the user's machine, made installable on this worker.

`Task.init` stores a freeze that can name things only the recording machine has: `pkg @ file:///croot/...` (conda
builds), `-e /home/me/src/lib` (editable checkouts, which pip freeze precedes with a `# Editable install ...
(lib==0.1)` comment), wheels in a local folder, and local version labels (`torch==2.1.0+cu121`) of builds that an
index may not serve. Like the reference agent, a local reference missing here is installed by name and version,
with one log line saying so. The `# Python 3.11.7 ...` header tells which interpreter the run used.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from conveyor.progress import Log

_PYTHON_HEADER = re.compile(r"^\s*#\s*Python\s+(\d+)\.(\d+)(?:\.\d+)?\b", re.IGNORECASE)
# pip freeze: "# Editable install with no version control (lib==0.1.0)" or "... (lib==0.1.0)" before "-e <path>"
_EDITABLE_COMMENT = re.compile(r"^\s*#\s*Editable\b.*\(([A-Za-z0-9][A-Za-z0-9._-]*)==([^)\s]+)\)")
_EDITABLE = re.compile(r"^\s*(?:-e|--editable)\s*(\S+)")
_DIRECT_REF = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*@\s*(\S+)")
_PINNED_LOCAL = re.compile(r"^(\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*(?:\[[^\]]*\])?\s*===?\s*)([^\s;,+]+)\+[A-Za-z0-9.]+")
# name-version in a wheel or sdist file name ("numpy-1.26.4-cp311-...whl", "lib-0.1.tar.gz")
_DIST_FILE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._]*?)-(\d[A-Za-z0-9.+!]*?)(?:-|\.tar\.gz$|\.zip$|\.tar\.bz2$)")


def requested_python(text: str | list[str] | None) -> str | None:
    """"3.11" from the SDK's "# Python 3.11.7 (main, ...) [GCC ...]" header of a requirement list, else None."""
    if not text:
        return None
    lines = _lines(text)
    for line in lines[:5]:  # the header comes first
        m = _PYTHON_HEADER.match(line)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def editable_versions(text: str | list[str] | None) -> dict[str, tuple[str, str]]:
    """For each `-e <target>` line that pip freeze preceded with its "# Editable install ... (name==ver)" comment:
    target → (name, version)."""
    if not text:
        return {}
    lines = _lines(text)
    found: dict[str, tuple[str, str]] = {}
    pending: tuple[str, str] | None = None
    for line in lines:
        comment = _EDITABLE_COMMENT.match(line)
        if comment:
            pending = (comment.group(1), comment.group(2))
            continue
        editable = _EDITABLE.match(line)
        if editable and pending:
            found[editable.group(1)] = pending
        if line.strip():
            pending = None
    return found


def localize(lines: list[str], base_dir: Path | None, editables: dict[str, tuple[str, str]], log: Log) -> list[str]:
    """`lines` with every local reference that does not exist on this worker replaced by `name==version` (by name
    alone when the version cannot be known, dropped when not even the name can), and local version labels removed
    from `==` pins (PEP 440: `==2.1.0` still takes a `2.1.0+cu121` build where the index has one)."""
    out: list[str] = []
    for line in lines:
        replaced = _localize_line(line, base_dir, editables)
        if replaced is None:
            out.append(line)
            continue
        new, why = replaced
        if new:
            log(f"requirements: {line} {why}; installing {new} instead")
            out.append(new)
        else:
            log(f"requirements: {line} {why}, and its package name is unknown; skipped")
    return out


def _localize_line(line: str, base_dir: Path | None, editables: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(replacement, reason) for a line that cannot be installed here as it is, else None."""
    editable = _EDITABLE.match(line)
    if editable:
        target = editable.group(1)
        path = _local_path(target, base_dir)
        if path is None or path.exists():
            return None  # a VCS or remote URL, or a folder that is here
        if target in editables:
            name, version = editables[target]
            return f"{name}=={version}", "is a folder of the recording machine"
        egg = re.search(r"[#&]egg=([A-Za-z0-9][A-Za-z0-9._-]*)", target)
        return (egg.group(1) if egg else ""), "is a folder of the recording machine"
    direct = _DIRECT_REF.match(line)
    if direct and direct.group(3).lower().startswith("file:"):
        path = _local_path(direct.group(3), base_dir)
        if path is not None and path.exists():
            return None
        name, extras = direct.group(1), direct.group(2) or ""
        dist = _DIST_FILE.match(Path(urlparse(direct.group(3)).path).name)
        version = dist.group(2) if dist and _same_name(dist.group(1), name) else ""
        return f"{name}{extras}" + (f"=={_public(version)}" if version else ""), "is a file of the recording machine"
    if line.startswith(("/", "./", "../", "~", "file:")) and "@" not in line:  # a bare wheel or folder path
        path = _local_path(line.split()[0], base_dir)
        if path is None or path.exists():
            return None
        dist = _DIST_FILE.match(path.name)
        if dist:
            return f"{dist.group(1)}=={_public(dist.group(2))}", "is a file of the recording machine"
        return "", "is a path of the recording machine"
    pinned = _PINNED_LOCAL.match(line)
    if pinned:
        return _PINNED_LOCAL.sub(r"\1\2", line, count=1), "pins a local build label"
    return None


def _local_path(target: str, base_dir: Path | None) -> Path | None:
    """The filesystem path a requirement target names, or None when it names no local file (git+, https...)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", target) and not target.lower().startswith("file:"):
        return None
    if target.lower().startswith("file:"):
        target = unquote(urlparse(target).path)
    target = target.split("#", 1)[0]
    path = Path(target).expanduser()
    if not path.is_absolute():
        if base_dir is None:
            return None
        path = base_dir / path
    return path


def _lines(text: str | list[str]) -> list[str]:
    """A requirement list as the task stores it (one text, or a list of lines) as lines."""
    return text.splitlines() if isinstance(text, str) else [str(v) for v in text]


def _same_name(a: str, b: str) -> bool:
    return re.sub(r"[-_.]+", "-", a).lower() == re.sub(r"[-_.]+", "-", b).lower()


def _public(version: str) -> str:
    return version.split("+", 1)[0]
