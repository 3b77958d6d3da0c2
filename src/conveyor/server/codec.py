"""How the server writes values: JSON documents (orjson), ISO-8601 times as ClearML answers them, epoch seconds.

Shared by the request layer and the store, so it depends on neither."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson

INT64_MAX = 2**63 - 1  # the databases hold 64-bit integers at most


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """Epoch seconds → the ISO-8601 form ClearML answers with."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def to_epoch(value: Any) -> float | None:
    """Task documents hold ISO strings; columns hold epoch seconds."""
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | bytes | None) -> Any:
    return orjson.loads(text) if text else None


Document = dict[str, Any]  # a task, queue or project as ClearML answers it (JSON)
