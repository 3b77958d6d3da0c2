"""The API's services: one module per ClearML service, each registering its endpoints in `registry`."""

from __future__ import annotations

from conveyor.server.services.registry import ENDPOINTS, Endpoint


def load_all() -> dict[str, Endpoint]:
    """Every endpoint, once each service module has been imported (and so has registered its handlers)."""
    from conveyor.server.services import auth, debug, events, projects, queues, tasks, users, workers  # noqa: F401

    return ENDPOINTS
