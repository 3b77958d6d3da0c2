"""The HTTP surface: `/vX.Y/service.action` and `/service.action`, GET/POST/PUT with JSON bodies, `{meta, data}`."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool

from conveyor.errors import ErrorFactory, map_exceptions
from conveyor.protocol import errors
from conveyor.protocol.envelope import API_VERSION, envelope
from conveyor.server import metrics, traffic
from conveyor.server.call import Call
from conveyor.server.files import FilesApp
from conveyor.server.lifecycle import Background
from conveyor.server.services import load_all
from conveyor.server.state import ServerState
from conveyor.server.store.errors import first_line
from conveyor.server.threads import in_thread
from conveyor.server.web import WEB_PATHS, WEB_PREFIXES
from conveyor.server.web import routes as web_routes

log = logging.getLogger("conveyor.server")

_API_PATH = re.compile(r"^/(?:v(\d+\.\d+)/)?([a-z_]+\.[a-z_]+)/?$")
_ENDPOINTS = load_all()
_PARSE_INLINE_MAX = 1 << 20  # bodies above 1 MiB are parsed in a thread
_TRIM_AFTER = 8 << 20  # after an answer this large, freed memory goes back to the system


def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator returns memory by itself, or not at all
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """glibc keeps the pages a large answer freed (in the arena of the thread that built it) until trimmed: without
    this, each large answer would leave tens of MB in the process for good."""
    if _TRIM is not None:
        _TRIM(0)


async def _read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` bytes (by its Content-Length, else while
    it streams in): nothing more is read or kept, and uvicorn discards the rest once the 413 is sent."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _too_large(path: str, limit_mb: float) -> tuple[int, bytes]:
    match = _API_PATH.match(path)
    name = match.group(2) if match else path.strip("/")
    version = (match.group(1) if match else None) or API_VERSION
    return _error(name, version, errors.ApiError(
        413, 0, f"Request body too large: this server accepts at most {limit_mb:g} MB per API call. Send smaller "
                "requests (split batches), or raise conveyor.server.max_request_body_mb on the server "
                "(or set CONVEYOR__SERVER__MAX_REQUEST_BODY_MB)"))


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


def parse_body(raw: bytes, content_type: str, name: str, max_depth: int) -> dict[str, Any]:
    """A JSON object; `events.add_batch` also takes JSON lines (the agent's form) or a JSON list."""
    if not raw.strip():
        return {}
    if name == "events.add_batch" and ("json-lines" in content_type or b"\n" in raw.strip()):
        try:
            events = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
        except orjson.JSONDecodeError:
            pass  # maybe a pretty-printed JSON document: fall through
        else:
            _check_depth(events, max_depth)
            return {"requests": events}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"Malformed JSON body: {exc}") from None
    _check_depth(body, max_depth)
    if name == "events.add_batch" and isinstance(body, list):
        return {"requests": body}
    if not isinstance(body, dict):
        raise errors.bad_request(f"The request body must be a JSON object, got {type(body).__name__}")
    return body


def _check_depth(value: Any, limit: int) -> None:
    """Refuse objects and lists nested deeper than `limit`: they only ever come from a bug or an attack, and past
    254 levels the answer could not even be serialised. Walks the containers only, without recursion."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise errors.bad_request(
                f"The request body nests objects or lists more than {limit} levels deep: flatten it (the server's "
                "limit is conveyor.server.max_json_depth)")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


@functools.cache  # once per endpoint (names reach here only once known), not on every call
def _database_errors(name: str) -> dict[type[BaseException], ErrorFactory]:
    """How the database's errors reach the caller of `name`: the one translation at the API's boundary."""

    def unavailable(exc: BaseException) -> errors.ApiError:  # restarting or unreachable: clients retry 503s
        log.warning("%s: database unavailable: %s", name, first_line(exc) if isinstance(exc, DBAPIError) else exc)
        return errors.ApiError(503, 0, "Database unavailable, retry later")

    def invalid_value(exc: BaseException) -> errors.ApiError:  # a value the database cannot hold or use (PostgreSQL)
        reason = first_line(exc) if isinstance(exc, DBAPIError) else exc.__class__.__name__
        return errors.bad_request(f"Invalid value in the request: {reason} (names hold at most 512 characters; "
                                  "regular expressions must also be valid PostgreSQL ones)")

    def failed(exc: BaseException) -> errors.ApiError:
        log.error("%s: database error", name, exc_info=exc)
        return errors.ApiError(500, 0, f"Database error: {exc.__class__.__name__}")

    return {OperationalError: unavailable, DataError: invalid_value, DBAPIError: failed}


def _answered(handler: Any, call: Call, name: str, version: str) -> bytes:
    """Handler and serialisation together, so that a thread does both (a large answer never stalls the loop)."""
    return orjson.dumps(envelope(name, version, handler(call)))


class ApiApp:
    """The API as a bare ASGI app: per request it does only what the protocol needs (the web UI uses Starlette)."""

    def __init__(self, state: ServerState, web: Any = None, files: Any = None):
        self.state = state
        self.web = web
        self.files = files
        self.metrics = metrics.ServerMetrics(state.store, max_queues=state.settings.metrics_max_queues)

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
        if self.web is not None and (path in WEB_PATHS or path.startswith(WEB_PREFIXES)):
            await self.web(scope, receive, send)
            return
        if path == metrics.PATH:
            await self._metrics(send)
            return
        limit = int(self.state.settings.max_request_body_mb * 1024 * 1024)
        raw = await _read_body(scope, receive, limit)
        if raw is None:
            status, payload = _too_large(path, self.state.settings.max_request_body_mb)
        else:
            began = time.perf_counter()
            status, payload = await self.handle(scope, raw, receive)
            match = _API_PATH.match(path)
            endpoint = match.group(2) if match and match.group(2) in _ENDPOINTS else "unknown"  # a bounded label set
            traffic.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - began)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        if len(payload) > _TRIM_AFTER:
            del payload
            await run_in_threadpool(release_memory)

    async def _metrics(self, send: Any) -> None:
        payload = await run_in_threadpool(self.metrics.exposition)  # a read of the database, off the loop
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", metrics.CONTENT_TYPE.encode()),
                                (b"content-length", str(len(payload)).encode())]})
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
            return _error(name, version, errors.ApiError(
                405, 0, f"Method {scope['method']} not allowed: use GET, POST or PUT"))
        state = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        watcher: asyncio.Future[Any] | None = None
        try:
            with map_exceptions(_database_errors(name)):
                args = (raw, headers.get("content-type", ""), name, state.settings.max_json_depth)
                body = parse_body(*args) if len(raw) < _PARSE_INLINE_MAX else await run_in_threadpool(parse_body, *args)
                query = scope.get("query_string")
                if query:
                    for key, value in parse_qsl(query.decode("latin-1")):
                        body.setdefault(key, _coerce(value))
                client = scope.get("client")
                call = Call(name, version, body, state, headers=headers, client_ip=client[0] if client else "")
                if ep.authorize:
                    header = headers.get("authorization")
                    if state.store.inline:
                        call.identity = state.auth.verify(header)
                    else:  # a read of the credentials (every few seconds, or a new key) is made in a thread
                        call.identity = state.auth.known(header) or await in_thread(state.auth.verify, header)
                if ep.is_async:
                    if ep.watches:
                        # After the body, the only message left to receive is the client's disconnect.
                        watcher = asyncio.ensure_future(receive())
                        call.disconnected = watcher
                    data = await ep.handler(call)
                elif (state.store.inline or not ep.database) and not ep.offload:
                    data = ep.handler(call)
                else:
                    return 200, await in_thread(_answered, ep.handler, call, name, version)
        except errors.ApiError as err:
            return _error(name, version, err)
        except Exception as exc:
            log.exception("%s: internal error", name)
            return _error(name, version, errors.ApiError(500, 0, f"Internal server error: {exc.__class__.__name__}"))
        finally:
            if watcher is not None:
                watcher.cancel()
        return 200, orjson.dumps(envelope(name, version, data))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        background = Background(self.state)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.state.signals.bind(asyncio.get_running_loop())
                    await background.start()
                except Exception as exc:
                    log.exception("server startup failed")
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
        files_app = FilesApp(state, files_dir)
    web_app = None
    if web:
        web_app = Starlette(routes=web_routes())
    return ApiApp(state, web_app, files_app)
