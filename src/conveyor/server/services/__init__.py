"""The endpoint registry: each service module registers its `service.action` handlers here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.server.call import Call


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Callable[[Call], Any]
    authorize: bool = True
    is_async: bool = False  # handler is a coroutine function run on the event loop (long-polls)
    offload: bool = False  # runs in a thread even on SQLite, answer serialised there too (large or slow answers)


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(name: str, *, authorize: bool = True, aliases: tuple[str, ...] = (), offload: bool = False) -> Callable:
    def register(fn: Callable[[Call], Any]) -> Callable[[Call], Any]:
        import inspect

        for n in (name, *aliases):
            ENDPOINTS[n] = Endpoint(n, fn, authorize, inspect.iscoroutinefunction(fn), offload)
        return fn

    return register


def load_all() -> dict[str, Endpoint]:
    from conveyor.server.services import auth, debug, events, projects, queues, tasks, users, workers  # noqa: F401

    return ENDPOINTS
