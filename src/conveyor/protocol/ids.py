"""Entity ids: 32 lower-case hex characters, as ClearML uses (the agent treats `^[-a-f0-9]{30,}$` as an id)."""

import re
import uuid

_ID = re.compile(r"^[-a-f0-9]{30,}$")


def new_id() -> str:
    return uuid.uuid4().hex


def looks_like_id(value: str) -> bool:
    return bool(_ID.match(value or ""))
