"""The HTTP surface: `/vX.Y/service.action` and `/service.action`, GET/POST/PUT with JSON bodies, `{meta, data}`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conveyor.protocol import errors
from conveyor.protocol.envelope import API_VERSION, envelope
from conveyor.server.call import Call
from conveyor.server.services import load_all
from conveyor.server.state import ServerState

log = logging.getLogger("conveyor.server")

_API_PATH = re.compile(r"^/(?:v(\d+\.\d+)/)?([a-z_]+\.[a-z_]+)/?$")
_ENDPOINTS = load_all()


def _json(payload: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _error(name: str, version: str, err: errors.ApiError) -> Response:
    return _json(envelope(name, version, None, err.code, err.subcode, err.msg, err.data), err.code)


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


def create_app(state: ServerState, *, web: bool = True) -> Starlette:
    async def api(request: Request) -> Response:
        path = request.url.path
        match = _API_PATH.match(path)
        version = API_VERSION
        if not match:
            return _error(path.strip("/"), version, errors.endpoint_not_found(path.strip("/"), version))
        version = match.group(1) or API_VERSION
        name = match.group(2)
        ep = _ENDPOINTS.get(name)
        if ep is None:
            return _error(name, version, errors.endpoint_not_found(name, version))
        try:
            body = parse_body(await request.body(), request.headers.get("content-type", ""), name)
            if request.url.query:
                for key, value in parse_qsl(request.url.query):
                    body.setdefault(key, _coerce(value))
            call = Call(name, version, body, state, headers=dict(request.headers),
                        client_ip=request.client.host if request.client else "",
                        disconnected=request.is_disconnected)
            if ep.authorize:
                call.identity = state.auth.verify(request.headers.get("authorization"))
            if ep.is_async:
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
                f"Invalid value in the request: {reason} (shorten names to 512 characters, use POSIX regular "
                "expressions, keep numbers in range)"))
        except DBAPIError as exc:
            log.exception("%s: database error", name)
            return _error(name, version, errors.ApiError(500, 0, f"Database error: {exc.__class__.__name__}"))
        except Exception as exc:
            log.exception("%s: internal error", name)
            return _error(name, version, errors.ApiError(500, 0, f"Internal server error: {exc.__class__.__name__}"))
        return _json(envelope(name, version, data), 200)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        from conveyor.server.lifecycle import Background

        state.signals.bind(asyncio.get_running_loop())
        background = Background(state)
        await background.start()
        try:
            yield
        finally:
            await background.stop()

    routes: list[Any] = []
    if web:
        from conveyor.server.web import routes as web_routes

        routes.extend(web_routes())
    routes.append(Route("/{path:path}", api, methods=["GET", "POST", "PUT"]))
    return Starlette(routes=routes, lifespan=lifespan)
