"""The store's error: a database that cannot be opened, migrated or reached."""

from __future__ import annotations

from conveyor.errors import InternalError


class StoreError(InternalError):
    """A database that cannot be opened or migrated; the message says which and what to do."""
