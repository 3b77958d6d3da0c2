"""`client.tasks.get_all(**body)` → `client.call("tasks.get_all", body)`: one thin helper per service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from conveyor.client.caller import ApiCaller

# The services a client may address as attributes; anything else goes through ApiClient.call.
SERVICES = ("auth", "debug", "users", "projects", "tasks", "queues", "workers", "events")


class Service:
    """Actions of one service as methods: keyword arguments make the JSON body."""

    def __init__(self, client: ApiCaller, name: str):
        self._client = client
        self._name = name

    def __getattr__(self, action: str) -> Callable[..., dict[str, Any]]:
        if action.startswith("_"):  # keep copy/pickle/inspect from inventing endpoints
            raise AttributeError(action)
        endpoint = f"{self._name}.{action}"

        def call(**body: Any) -> dict[str, Any]:
            return self._client.call(endpoint, body)

        call.__name__ = action
        call.__qualname__ = endpoint
        return call

    def __repr__(self) -> str:
        return f"<Service {self._name}>"


class ServiceAttribute:
    """Class attribute of ApiClient that hands out the Service of its own name."""

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in SERVICES:
            raise TypeError(f"{name!r} is not one of SERVICES")
        self._name = name

    @overload
    def __get__(self, client: None, owner: type | None = None) -> ServiceAttribute: ...
    @overload
    def __get__(self, client: ApiCaller, owner: type | None = None) -> Service: ...
    def __get__(self, client: ApiCaller | None, owner: type | None = None) -> ServiceAttribute | Service:
        return self if client is None else Service(client, self._name)
