"""One API call as a service sees it: the body with typed accessors, who is calling, and the server."""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass, field
from typing import Any

from conveyor.protocol import errors
from conveyor.server.auth import Identity
from conveyor.server.codec import INT64_MAX
from conveyor.server.state import ServerState
from conveyor.server.store import Store

_MISSING = object()


@dataclass
class Call:
    endpoint: str
    version: str
    body: dict[str, Any]
    state: ServerState
    identity: Identity | None = None
    headers: dict[str, str] = field(default_factory=dict)
    client_ip: str = ""
    disconnected: Any = None  # a future that completes when the client goes away (long-polls watch it)
    name_pattern: str | None = None  # the `name` regex of a get_all, set by query.name_filter for query.fetch
    name_index_pattern: str | None = None  # the same as SQLite's trigram index reads it (query.name_filter)
    closed_to_worker: bool = False  # a pop found every queue closed to the named worker (queues.get_next_task)

    @property
    def store(self) -> Store:
        return self.state.store

    @property
    def user(self) -> str:
        return self.identity.user if self.identity else ""

    @property
    def is_admin(self) -> bool:
        return self.identity is not None and self.identity.role == "admin"

    # Typed accessors: a wrong type or a missing required field is a 400 that names the field.
    def get(self, name: str, default: Any = None) -> Any:
        value = self.body.get(name, default)
        return default if value is None else value

    def str(self, name: builtins.str, default: Any = _MISSING, *, required: builtins.bool = False) -> Any:
        value = self.body.get(name)
        if value is None:
            if required:
                raise errors.missing_field(name)
            return None if default is _MISSING else default
        if not isinstance(value, str):
            raise errors.validation_error(
                f"Validation error: field '{name}' must be a string, got {type(value).__name__}")
        if required and not value:
            raise errors.missing_field(name)
        return value

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise errors.validation_error(f"Validation error: field '{name}' must be a boolean")

    def int(self, name: builtins.str, default: builtins.int | None = None, *, minimum: builtins.int | None = None,
            maximum: builtins.int = INT64_MAX) -> builtins.int | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise errors.validation_error(f"Validation error: field '{name}' must be an integer")
        try:
            number = int(value)
        except (ValueError, OverflowError):
            raise errors.validation_error(f"Validation error: field '{name}' must be an integer") from None
        if minimum is not None and number < minimum:
            raise errors.validation_error(f"Validation error: field '{name}' must be at least {minimum}")
        if number > maximum:  # the databases hold 64-bit integers at most
            raise errors.validation_error(f"Validation error: field '{name}' must be at most {maximum}")
        return number

    def float(self, name: builtins.str, default: builtins.float | None = None) -> builtins.float | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise errors.validation_error(f"Validation error: field '{name}' must be a number")
        try:
            number = float(value)
        except ValueError:
            raise errors.validation_error(f"Validation error: field '{name}' must be a number") from None
        if not math.isfinite(number):
            raise errors.validation_error(f"Validation error: field '{name}' must be a finite number")
        return number

    def str_list(self, name: builtins.str) -> builtins.list[builtins.str] | None:
        """A list of strings; a single string is accepted as a list of one, as the reference server does."""
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.validation_error(f"Validation error: field '{name}' must be a list of strings")
        return value

    def dict(self, name: builtins.str) -> builtins.dict[builtins.str, Any] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise errors.validation_error(f"Validation error: field '{name}' must be an object")
        return value

    def list(self, name: builtins.str) -> builtins.list[Any] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise errors.validation_error(f"Validation error: field '{name}' must be a list")
        return value

