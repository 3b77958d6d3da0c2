"""`Config`: the merged settings, read by dotted key."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import conveyor.config.hocon as hocon
from conveyor.config.errors import ConfigKeyError
from conveyor.config.masking import mask

_MISSING: Any = object()


class Config:
    """Read-only view of the merged configuration (defaults ← file ← environment)."""

    def __init__(self, data: dict[str, Any], path: Path | None = None):
        self._data = data
        self._path = path

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value at a dotted key (`"agent.package_manager.type"`); sections come back as dicts (copies).
        Without `default`, a missing key raises ConfigKeyError."""
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise ConfigKeyError(f"No setting {key!r} in the configuration", key=key)
                return default
            node = node[part]
        return copy.deepcopy(node) if isinstance(node, (dict, list)) else node

    def get_path(self, key: str) -> Path | None:
        """A path setting with `~` and `$VARS` expanded; None when unset or empty."""
        value = self.get(key)
        if not value:
            return None
        return Path(os.path.expandvars(os.path.expanduser(str(value))))

    @property
    def path(self) -> Path | None:
        """The config file that was loaded, or None when only defaults and the environment apply."""
        return self._path

    @property
    def api_host(self) -> str:
        return str(self.get("api.api_server")).rstrip("/")

    @property
    def web_host(self) -> str:
        return str(self.get("api.web_server")).rstrip("/")

    @property
    def files_host(self) -> str:
        return str(self.get("api.files_server")).rstrip("/")

    @property
    def access_key(self) -> str:
        return str(self.get("api.credentials.access_key") or "")

    @property
    def secret_key(self) -> str:
        return str(self.get("api.credentials.secret_key") or "")

    def as_dict(self, masked: bool = True) -> dict[str, Any]:
        """All settings as plain dicts; with `masked`, secrets are replaced by ****."""
        if not masked:
            return copy.deepcopy(self._data)
        return mask(self._data, self.get("agent.sanitize_config_printout", {}))

    def to_hocon(self, masked: bool = True) -> str:
        """The settings as HOCON text, for printing (`conveyor config`)."""
        return hocon.dump(self.as_dict(masked)) + "\n"

    def __repr__(self) -> str:
        return f"Config(path={str(self._path) if self._path else None!r})"
