"""How the management commands print: aligned tables for people, JSON for programs, warnings on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def print_created(answer: dict[str, Any], as_json: bool) -> None:
    """What `create` commands print: the new id alone (for scripts), or the server's whole answer with --json."""
    if as_json:
        print_json(answer)
    else:
        print(answer["id"])


def required_name(text: str, kind: str, example: str) -> str:
    """A name given on the command line, stripped; SpecError when nothing is left."""
    from conveyor.client.task_builder import SpecError

    name = text.strip()
    if not name:
        raise SpecError(f"The {kind} name is empty — give a name, e.g. `conveyor {kind} create {example}`")
    return name


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "") -> None:
    """Columns padded to their widest cell; the last column is not padded (it may be long)."""
    if not rows:
        if empty:
            print(empty, file=sys.stderr)
        return
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)).rstrip())


def warn(message: str) -> None:
    print(f"conveyor: warning: {message}", file=sys.stderr)


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def local_time(value: Any) -> str:
    """An ISO time of the server as local `YYYY-MM-DD HH:MM:SS`; "" when unset."""
    ts = _epoch(value)
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def age(value: Any, now: float | None = None) -> str:
    """How long ago: `4s ago`, `12m ago`, `3h ago`, `2d ago`; "" when unset."""
    ts = _epoch(value)
    if ts is None:
        return ""
    seconds = max(0, int((time.time() if now is None else now) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def safe_url(url: str) -> str:
    """A URL without user:password@ (a task written by another client may hold one)."""
    parts = urlsplit(url or "")
    if "@" not in parts.netloc or not parts.scheme:
        return url or ""
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
