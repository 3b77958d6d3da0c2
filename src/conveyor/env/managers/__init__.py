"""Package managers behind one interface (`base.Manager`): uv (the default), pip, poetry, conda."""

from __future__ import annotations

from conveyor.env.managers.base import BuildSpec, EnvBuildError, Manager
from conveyor.env.managers.conda import CondaManager
from conveyor.env.managers.pip import PipManager
from conveyor.env.managers.poetry import PoetryManager
from conveyor.env.managers.uv import UvManager

MANAGERS: dict[str, type] = {"uv": UvManager, "pip": PipManager, "poetry": PoetryManager, "conda": CondaManager}


def get_manager(name: str) -> Manager:
    """The manager named by agent.package_manager.type."""
    try:
        return MANAGERS[name.strip().lower()]()
    except KeyError:
        raise EnvBuildError(f"Unknown package manager {name!r} in agent.package_manager.type: "
                            f"use one of {', '.join(MANAGERS)}") from None


__all__ = ["MANAGERS", "BuildSpec", "EnvBuildError", "Manager", "get_manager"]
