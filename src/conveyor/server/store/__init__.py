"""Storage: one schema (SQLAlchemy Core), SQLite by default, PostgreSQL by URL."""

from conveyor.server.store.database import Store, StoreError

__all__ = ["Store", "StoreError"]
