"""HOCON in and out: text → plain dicts (cached on disk: pyhocon costs ~0.5 s per parse), dicts → HOCON text."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.config.errors import ConfigError

_CACHE_FORMAT = "1"  # bump when the cached shape changes
# pyparsing appends "  (at char 25), (line:6, col:1)"; pyhocon's own errors end in "(line: 1, col: 4)"
_POSITION = re.compile(r"\s*\(at char \d+\),?\s*|\s*\(line:\s*(\d+),\s*col:\s*(\d+)\)")
_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# pyhocon's parser (pyparsing) keeps state between calls: two threads parsing at once got an empty tree (seen: clients
# made in parallel threads found no credentials in their files), so parses take turns
_PARSING = threading.Lock()
# a whole line that is a comment: what it says cannot change the parse (defaults.conf's comments name ${VARS})
_COMMENT_LINE = re.compile(r"^[ \t]*(?:#|//).*$", re.MULTILINE)


def parse(text: str, *, source: str, hint: str, cache_slot: str | None, environ: Mapping[str, str],
          basedir: str | None = None) -> dict[str, Any]:
    """Parse HOCON `text` (shown to the user as `source`) to plain dicts; errors become ConfigError + `hint`.

    `cache_slot` names the disk-cache entry (one per file); text with substitutions or includes is never
    cached, since its meaning depends on more than the text.
    """
    # (within a triple-quoted string a "comment" line is text, and what follows the string may substitute)
    meaning = text if '"""' in text else _COMMENT_LINE.sub("", text)
    cacheable = cache_slot is not None and "${" not in meaning and "include" not in meaning
    digest = hashlib.sha256((_CACHE_FORMAT + text).encode()).hexdigest()
    cache_file = _cache_dir(environ) / f"{cache_slot}.json" if cacheable else None
    if cache_file is not None:
        cached = _read_cache(cache_file, digest)
        if cached is not None:
            return cached

    from pyhocon import ConfigFactory, ConfigTree  # imported late: the import alone costs ~0.2 s

    try:
        with _PARSING:
            tree = ConfigFactory.parse_string(text, basedir=basedir)
    # pyparsing and pyhocon raise many types; all mean "bad file". No chaining: their text may quote a secret.
    except Exception as exc:  # noqa: BLE001
        raise _parse_error(exc, source, hint) from None
    if not isinstance(tree, ConfigTree):
        raise ConfigError(f"{source}: the file must hold `key: value` settings, not a bare list — {hint}",
                          source=source)
    data = json.loads(json.dumps(tree.as_plain_ordered_dict()))  # plain dicts, lists and scalars only
    if cache_file is not None and (data or not meaning.strip()):  # an empty result from settings is never kept
        _write_cache(cache_file, digest, data)
    return data


def _parse_error(exc: Exception, source: str, hint: str) -> ConfigError:
    text = str(exc)
    line = getattr(exc, "lineno", None)
    match = re.search(r"\(line:\s*(\d+),\s*col:\s*\d+\)", text)
    if line is None and match:
        line = int(match.group(1))
    message = _POSITION.sub("", text).strip() or type(exc).__name__
    message = message[0].lower() + message[1:]
    where = f"{source}, line {line}" if line else source
    return ConfigError(f"{where}: {message} — {hint}", source=source, line=line)


def _cache_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or str(Path.home()), ".cache")
    return Path(base) / "conveyor" / "config"


def _read_cache(path: Path, digest: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(entry, dict) and entry.get("digest") == digest and isinstance(entry.get("data"), dict):
        return entry["data"]
    return None


def _write_cache(path: Path, digest: str, data: dict[str, Any]) -> None:
    # Best effort and atomic: a read-only or full disk only costs the next start-up a parse.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as out:
            json.dump({"digest": digest, "data": data}, out)
        os.replace(tmp, path)
    except OSError:
        pass


def dump(data: Mapping[str, Any], indent: int = 0) -> str:
    """HOCON text for plain dicts: sections as blocks, values as JSON (which HOCON reads back unchanged)."""
    pad = "  " * indent
    lines = []
    for key, value in data.items():
        name = key if _BARE_KEY.match(key) else _quote(key)
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{name} {{")
            lines.append(dump(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{name} {{}}")
        else:
            lines.append(f"{pad}{name}: {_quote(value)}")
    return "\n".join(lines)


def _quote(value: Any) -> str:
    # pyhocon does not decode \uXXXX escapes, so non-ASCII text is written as it is (the file is UTF-8)
    return json.dumps(value, ensure_ascii=False)
