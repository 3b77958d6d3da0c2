"""The HTTP surface: `/vX.Y/service.action` and `/service.action`, GET/POST/PUT with JSON bodies, `{meta, data}`."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool

from conveyor.protocol import errors
from conveyor.protocol.envelope import API_VERSION, envelope
from conveyor.server.call import Call
from conveyor.server.services import load_all
from conveyor.server.state import ServerState

log = logging.getLogger("conveyor.server")

_API_PATH = re.compile(r"^/(?:v(\d+\.\d+)/)?([a-z_]+\.[a-z_]+)/?$")
_ENDPOINTS = load_all()


def _error(name: str, version: str, err: errors.ApiError) -> tuple[int, bytes]:
    return err.code, orjson.dumps(envelope(name, version, None, err.code, err.subcode, err.msg, err.data))


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def parse_body(raw: bytes, content_type: str, name: str) -> dict[str, Any]:
    """A JSON object; `events.add_batch` also takes JSON lines (the agent's form) or a JSON list."""
    if not raw.strip():
        return {}
    if name == "events.add_batch" and ("json-lines" in content_type or b"\n" in raw.strip()):
        try:
            return {"requests": [orjson.loads(line) for line in raw.splitlines() if line.strip()]}
        except orjson.JSONDecodeError:
            pass  # maybe a pretty-printed JSON document: fall through
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"Malformed JSON body: {exc}") from None
    if name == "events.add_batch" and isinstance(body, list):
        return {"requests": body}
    if not isinstance(body, dict):
        raise errors.bad_request(f"The request body must be a JSON object, got {type(body).__name__}")
    return body


class ApiApp:
    """The API as a bare ASGI app: per request it does only what the protocol needs (the web UI uses Starlette)."""

    def __init__(self, state: ServerState, web: Any = None, files: Any = None):
        self.state = state
        self.web = web
        self.files = files

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        if self.files is not None and (path == "/files" or path.startswith("/files/")):
            await self.files(scope, receive, send)
            return
        if self.web is not None and (path == "/" or path.startswith(("/ui/", "/projects/"))):
            await self.web(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        status, payload = await self.handle(scope, b"".join(chunks), receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def handle(self, scope: dict[str, Any], raw: bytes, receive: Any) -> tuple[int, bytes]:
        path: str = scope["path"]
        match = _API_PATH.match(path)
        version = API_VERSION
        if not match:
            return _error(path.strip("/"), version, errors.endpoint_not_found(path.strip("/"), version))
        version = match.group(1) or API_VERSION
        name = match.group(2)
        ep = _ENDPOINTS.get(name)
        if ep is None:
            return _error(name, version, errors.endpoint_not_found(name, version))
        if scope["method"] not in ("GET", "POST", "PUT"):
            return _error(name, version, errors.ApiError(405, 0, f"Method {scope['method']} not allowed: use GET, POST or PUT"))
        state = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        watcher: asyncio.Future[Any] | None = None
        try:
            body = parse_body(raw, headers.get("content-type", ""), name)
            query = scope.get("query_string")
            if query:
                for key, value in parse_qsl(query.decode("latin-1")):
                    body.setdefault(key, _coerce(value))
            client = scope.get("client")
            call = Call(name, version, body, state, headers=headers, client_ip=client[0] if client else "")
            if ep.authorize:
                call.identity = state.auth.verify(headers.get("authorization"))
            if ep.is_async:
                # After the body, the only message left to receive is the client's disconnect.
                watcher = asyncio.ensure_future(receive())
                call.disconnected = watcher
                data = await ep.handler(call)
            elif state.store.inline:
                data = ep.handler(call)
            else:
                data = await run_in_threadpool(ep.handler, call)
        except errors.ApiError as err:
            return _error(name, version, err)
        except OperationalError as exc:  # database restarting or unreachable: clients retry 503s
            log.warning("%s: database unavailable: %s", name, str(exc.orig).splitlines()[0] if exc.orig else exc)
            return _error(name, version, errors.ApiError(503, 0, "Database unavailable, retry later"))
        except DataError as exc:  # a value the database cannot hold or use (PostgreSQL): the caller's mistake
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else exc.__class__.__name__
            return _error(name, version, errors.bad_request(
                f"Invalid value in the request: {reason} (names hold at most 512 characters; regular expressions "
                "must also be valid PostgreSQL ones)"))
        except DBAPIError as exc:
            log.exception("%s: database error", name)
            return _error(name, version, errors.ApiError(500, 0, f"Database error: {exc.__class__.__name__}"))
        except Exception as exc:
            log.exception("%s: internal error", name)
            return _error(name, version, errors.ApiError(500, 0, f"Internal server error: {exc.__class__.__name__}"))
        finally:
            if watcher is not None:
                watcher.cancel()
        return 200, orjson.dumps(envelope(name, version, data))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        from conveyor.server.lifecycle import Background

        background = Background(self.state)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.state.signals.bind(asyncio.get_running_loop())
                    await background.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await background.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(state: ServerState, *, web: bool = True, files_dir: Path | None = None) -> ApiApp:
    files_app = None
    if files_dir is not None:
        from conveyor.server.files import FilesApp

        files_app = FilesApp(state, files_dir)
    web_app = None
    if web:
        from starlette.applications import Starlette

        from conveyor.server.web import routes as web_routes

        web_app = Starlette(routes=web_routes())
    return ApiApp(state, web_app, files_app)
