"""The endpoint registry: each service module registers its `service.action` handlers here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.server.call import Call

Handler = Callable[[Call], Any]


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    authorize: bool = True
    is_async: bool = False  # handler is a coroutine function run on the event loop (long-polls)
    offload: bool = False  # runs in a thread even on SQLite, answer serialised there too (large or slow answers)
    database: bool = True  # False: reads no database, so it runs on the event loop on PostgreSQL too
    watches: bool = False  # an async handler told when its client goes away (`call.disconnected`): long-polls


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(name: str, *, authorize: bool = True, aliases: tuple[str, ...] = (), offload: bool = False,
             database: bool = True, watches: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in (name, *aliases):
            ENDPOINTS[n] = Endpoint(n, fn, authorize, inspect.iscoroutinefunction(fn), offload, database, watches)
        return fn

    return register
