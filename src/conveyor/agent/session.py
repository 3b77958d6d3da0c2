"""The agent's connection to the server: it retries as the reference agent does (long, and 503 for ever), so
that a server restart in the middle of a task loses nothing."""

from __future__ import annotations

from conveyor.client import ApiClient
from conveyor.config import Config


def agent_client(cfg: Config) -> ApiClient:
    return ApiClient.from_config(cfg, max_retries=int(cfg.get("api.http.retries.total")), retry_forever_on_503=True)
