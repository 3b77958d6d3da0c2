"""The agent's connection to the server: it retries as the reference agent does (long, and 503 for ever), so
that a server restart in the middle of a task loses nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping

from conveyor.agent.ahead import Ahead
from conveyor.client import ApiClient
from conveyor.config import Config
from conveyor.errors import ConveyorError


def agent_client(cfg: Config) -> ApiClient:
    return ApiClient.from_config(cfg, max_retries=int(cfg.get("api.http.retries.total")), retry_forever_on_503=True)


class PreparedClient:
    """A client made and logged in ahead of its use (a standby executor's, while it waits for its task): a login is
    the slowest call of a run's start."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.client = agent_client(cfg)
        self._env = _http_env(os.environ)
        self._login = Ahead(self.client.auth_token, "login")

    def client_for(self, cfg: Config) -> ApiClient | None:
        """The client, if `cfg` and the proxy and CA variables are those it was made with, once its login is done;
        else None."""
        if not self._login.done() or cfg.path != self.cfg.path or cfg.as_dict(False) != self.cfg.as_dict(False) \
                or _http_env(os.environ) != self._env:
            return None
        try:
            self._login.result()
        except ConveyorError:  # the server may have been away then: a fresh client tries again
            return None
        return self.client


def _http_env(env: Mapping[str, str]) -> dict[str, str]:
    """What httpx reads from the environment when a client is made: proxies and CA files."""
    names = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file", "ssl_cert_dir")
    return {k: v for k, v in env.items() if k.lower() in names}
