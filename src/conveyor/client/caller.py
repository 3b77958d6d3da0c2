"""The part of the API client that the agent uses, as a type: the real `ApiClient` is one, so is a test's fake."""

from __future__ import annotations

from typing import Any, Protocol


class ApiCaller(Protocol):
    def call(self, endpoint: str, body: dict[str, Any] | None = None, *, version: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Call `endpoint` ("tasks.get_all"); returns the answer's `data`. Raises ApiCallError, ServerUnreachable."""
        ...

    def call_lines(self, endpoint: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Send events as JSON lines (`events.add_batch`)."""
        ...

    def server_supports(self, feature: str) -> bool:
        """Whether the server advertises a Conveyor feature ("long_poll")."""
        ...

    def auth_token(self) -> str:
        """A session token for a task, instead of the agent's key and secret."""
        ...
