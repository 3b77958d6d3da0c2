"""Writing a first clearml.conf: an `api` section the Conveyor CLI, the agent and the clearml SDK all read."""

from __future__ import annotations

import os
from pathlib import Path

import conveyor.config.hocon as hocon
from conveyor.config.errors import ConfigError
from conveyor.config.loader import display_path

_HEADER = "# Written by Conveyor. Settings not named here keep their defaults.\n"


def write_api_section(path: str | os.PathLike[str], api_host: str, web_host: str, files_host: str,
                      access_key: str, secret_key: str, agent: dict[str, object] | None = None) -> bool:
    """Create `path` (mode 0600: it holds a secret) with an `api { ... }` section (and `agent` settings when
    given, e.g. git credentials from `conveyor init`). Never overwrites: returns False, leaving the file alone,
    when it already exists."""
    target = Path(os.path.expanduser(os.fspath(path)))
    sections: dict[str, object] = {"api": {
        "api_server": api_host.rstrip("/"),
        "web_server": web_host.rstrip("/"),
        "files_server": files_host.rstrip("/"),
        "credentials": {"access_key": access_key, "secret_key": secret_key},
    }}
    if agent:
        sections["agent"] = agent
    text = _HEADER + hocon.dump(sections) + "\n"
    try:
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True)
        # O_EXCL: the check and the creation are one step, so a file made meanwhile is not overwritten either
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        if exc.filename is not None and Path(exc.filename) == target:
            return False
        raise ConfigError(f"Cannot create {display_path(target)}: {exc.filename} is not a folder — choose another "
                          "path with CLEARML_CONFIG_FILE", source=display_path(target)) from None
    except OSError as exc:
        raise ConfigError(f"Cannot create {display_path(target)}: {exc.strerror or exc} — choose another path "
                          "with CLEARML_CONFIG_FILE", source=display_path(target)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return True
