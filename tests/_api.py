"""Helpers the API test modules share: one server per module on either database, and raw HTTP calls."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerProcess, pg_database


@contextlib.contextmanager
def module_server(kind: str, home: Path, **kw: Any) -> Iterator[ServerProcess]:
    """A `conveyor server` on SQLite ("sqlite") or on a fresh PostgreSQL database ("postgresql")."""
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(pg_database()) if kind == "postgresql" else None
        proc = ServerProcess(home, db=db, **kw).start()
        stack.callback(proc.stop)
        yield proc


def signing_key(server: ServerProcess) -> str:
    """The server's JWT key, read from its database (`meta.jwt_secret`), to forge tokens with."""
    if server.db:
        import psycopg

        with psycopg.connect(server.db) as conn:
            return conn.execute("SELECT value FROM meta WHERE key = 'jwt_secret'").fetchone()[0]
    with sqlite3.connect(server.home / ".conveyor" / "conveyor.db") as conn:
        return conn.execute("SELECT value FROM meta WHERE key = 'jwt_secret'").fetchone()[0]


def login(server: ServerProcess, key: str | None = None, secret: str | None = None) -> httpx.Response:
    if key is None:
        key, secret = server.credentials()
    return httpx.get(f"{server.url}/auth.login", auth=(key, secret or ""), timeout=10)


class Raw:
    """Calls with full control of the request: method, URL version, body bytes, headers, token."""

    def __init__(self, server: ServerProcess, token: str | None = None):
        self.server = server
        self.token = token if token is not None else login(server).json()["data"]["token"]
        self.http = httpx.Client(timeout=30)

    def request(self, endpoint: str, body: Any = None, *, method: str = "POST", version: str | None = None,
                content: bytes | None = None, content_type: str = "application/json",
                token: str | None = None, auth: bool = True) -> httpx.Response:
        url = f"{self.server.url}/v{version}/{endpoint}" if version else f"{self.server.url}/{endpoint}"
        headers = {"Content-Type": content_type}
        if auth:
            headers["Authorization"] = f"Bearer {token if token is not None else self.token}"
        if content is None:
            content = json.dumps(body if body is not None else {}).encode()
        return self.http.request(method, url, content=content, headers=headers)

    def ok(self, endpoint: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        """`data` of a call that must succeed."""
        response = self.request(endpoint, body, **kw)
        payload = response.json()
        assert response.status_code == 200, payload["meta"]
        assert payload["meta"]["result_code"] == 200
        return payload["data"]

    def error(self, endpoint: str, body: Any = None, **kw: Any) -> tuple[int, int, str]:
        """(HTTP status, result_subcode, result_msg) of a call that must fail; the envelope must agree."""
        response = self.request(endpoint, body, **kw)
        payload = response.json()
        meta = payload["meta"]
        assert response.status_code >= 400, payload
        assert meta["result_code"] == response.status_code, meta
        assert isinstance(payload["data"], dict)
        return response.status_code, meta["result_subcode"], meta["result_msg"]
