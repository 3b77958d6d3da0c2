"""`debug.ping` and `server.info`: unauthenticated, and where our agent learns what this server supports."""

from __future__ import annotations

from typing import Any

from conveyor import __version__
from conveyor.protocol.envelope import API_VERSION, SERVER_VERSION
from conveyor.server.auth import FEATURES
from conveyor.server.call import Call
from conveyor.server.services.registry import endpoint


def _info(call: Call) -> dict[str, Any]:
    return {"version": SERVER_VERSION, "build": f"conveyor-{__version__}", "commit": "", "api_version": API_VERSION,
            "conveyor": {"version": __version__, "features": FEATURES,
                         "long_poll_max_sec": call.state.settings.long_poll_max_sec}}


@endpoint("debug.ping", authorize=False, database=False)  # health checks: no thread, no database
def ping(call: Call) -> dict[str, Any]:
    return {"msg": "Conveyor server", **_info(call)}


@endpoint("server.info", authorize=False, database=False)
def info(call: Call) -> dict[str, Any]:
    return _info(call)
