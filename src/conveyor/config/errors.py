"""The one error type of the config package: its message is meant for the user, as is."""

from __future__ import annotations

from conveyor.errors import UserError


class ConfigError(UserError):
    """A config file or variable that cannot be used. `str()` says where, what, and what to do."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None, key: str | None = None):
        super().__init__(message)
        self.source = source  # the file (as shown to the user) or the environment variable
        self.line = line
        self.key = key


class ConfigKeyError(ConfigError, KeyError):
    """`Config.get` of a key that is not there (a programming error more often than a user's)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
