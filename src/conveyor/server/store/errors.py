"""The store's error (a database that cannot be opened, migrated or reached), and how a database's errors read."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

from conveyor.errors import InternalError


class StoreError(InternalError):
    """A database that cannot be opened or migrated; the message says which and what to do."""


def first_line(exc: DBAPIError) -> str:
    """What the database said, in one line (its messages run on with details and hints)."""
    lines = str(exc.orig).strip().splitlines() if exc.orig else []
    return lines[0] if lines else exc.__class__.__name__
