"""The files server under `/files` (clearml-wire.md §6.5): what `task.upload_artifact` uploads and later downloads.

`POST /files` (or `/files/`) takes `multipart/form-data`; each part with a filename is stored at the path its field
name gives (the SDK sends the same path as name and filename), relative to the files dir; the answer is the JSON list
of stored paths, as the reference files server's. `GET`/`HEAD /files/<path>` download, `DELETE /files/<path>` removes.
Every request needs `Authorization: Bearer <token>`, as the API: the SDK sends it to its files host on every method.
Bodies stream to a temporary file beside the target, which is renamed into place once complete (readers never see a
partial file); paths with `..`, NUL or that resolve (through symlinks) outside the files dir are refused with 400.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response

from conveyor.errors import UserError
from conveyor.protocol import errors
from conveyor.server.state import ServerState

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger("conveyor.server.files")

PREFIX = "/files"


class _Refused(UserError):
    """An upload or download refused with an HTTP status (the client's request was at fault)."""

    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status
        self.msg = msg


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def resolve(root: Path, rel: str) -> Path:
    """The real path of `rel` under `root`; `_Refused(400)` for `..`, NUL, empty paths or escapes through symlinks."""
    if "\x00" in rel:
        raise _Refused(400, "Invalid path: NUL character")
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise _Refused(400, "Invalid path: empty")
    if ".." in parts:
        raise _Refused(400, "Invalid path: '..' is not allowed")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, target]) != real_root or target == real_root:
        raise _Refused(400, "Invalid path: outside the files directory")
    return Path(target)


class _Upload:
    """python-multipart callbacks: each file part goes to a temp file beside its target, renamed at its end."""

    def __init__(self, root: Path):
        self.root = root
        self.stored: list[str] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._file: Any = None
        self._tmp: str | None = None
        self._target: Path | None = None
        self._rel = ""

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"filename" not in options:
            return  # a plain form field, not a file: ignored (as the reference files server)
        try:
            rel = (options.get(b"name") or options[b"filename"]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, "Invalid path: not UTF-8") from None
        target = resolve(self.root, rel)
        if target.is_dir():
            raise _Refused(400, f"Invalid path: {rel} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self._target, self._rel = target, rel.lstrip("/")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])

    def _part_end(self) -> None:
        if self._file is None or self._tmp is None or self._target is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self._target)
        self.stored.append(self._rel)
        self._file = self._tmp = self._target = None

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
        self._file = self._tmp = self._target = None


class FilesApp:
    """ASGI app for `/files` and `/files/*`."""

    def __init__(self, state: ServerState, root: Path):
        self.state = state
        self.root = root  # created by the first upload

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except _Refused as exc:
            response = _answer(exc.status, {"error": exc.msg})
        except OSError as exc:
            log.warning("files: %s %s: %s", request.method, scope["path"], exc)
            response = _answer(500, {"error": f"Storage error: {exc.strerror or exc.__class__.__name__}"})
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        try:
            self.state.auth.verify(request.headers.get("authorization"))
        except errors.ApiError as err:
            return _answer(err.code, {"error": err.msg}, {"WWW-Authenticate": "Bearer"})
        rel = request.scope["path"][len(PREFIX):].lstrip("/")
        method = request.method
        if method == "POST" and not rel:
            return await self._upload(request)
        if not rel:
            return _answer(405, {"error": "Upload with POST /files/; download with GET /files/<path>"},
                           {"Allow": "POST"})
        if method in ("GET", "HEAD"):
            target = resolve(self.root, rel)
            if not target.is_file():
                return _answer(404, {"error": f"File not found: {rel}"})
            media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            return FileResponse(target, media_type=media_type)
        if method == "DELETE":
            target = resolve(self.root, rel)
            if not target.is_file():
                return _answer(404, {"error": f"File not found: {rel}"})
            await run_in_threadpool(target.unlink)
            return _answer(200, {"deleted": rel})
        return _answer(405, {"error": f"Method {method} not allowed"}, {"Allow": "GET, HEAD, DELETE"})

    async def _upload(self, request: Request) -> Response:
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise _Refused(400, "Upload with Content-Type: multipart/form-data")
        upload = _Upload(self.root)
        parser = MultipartParser(boundary, upload.callbacks())
        try:
            # Parsing writes to disk: run it off the event loop, one received chunk at a time.
            async for chunk in request.stream():
                if chunk:
                    await run_in_threadpool(parser.write, chunk)
            await run_in_threadpool(parser.finalize)
        except (_Refused, OSError):
            raise
        except (ValueError, ClientDisconnect) as exc:  # python-multipart's parse errors, a client that went away
            raise _Refused(400, f"Malformed multipart body: {exc}") from None
        finally:
            await run_in_threadpool(upload.abort)
        if not upload.stored:
            raise _Refused(400, "No file in the upload (send each file as a multipart part with a filename)")
        return _answer(200, upload.stored)
