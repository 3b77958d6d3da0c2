"""`ApiClient`: calls `service.action` on a Conveyor or ClearML server (clearml-wire.md 1-2).

Logs in lazily, refreshes the JWT before it expires and once after a 401, retries connection errors and
429/502/503/504/509 with capped exponential backoff. Safe to share between a daemon's threads.

httpx's errors become ours in one place, `_request_once`: no answer is ServerUnreachable, a request httpx could not
complete otherwise (a redirect loop, an undecodable body) is ApiCallError. A `transport` (an httpx.BaseTransport)
replaces the network, e.g. a server's ASGI app run in-process by tests.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from conveyor import __version__
from conveyor.client.errors import ApiCallError, AuthError, ServerUnreachable
from conveyor.client.services import ServiceAttribute
from conveyor.client.token import Token
from conveyor.config import Config, defaults, display_path
from conveyor.errors import UserError, map_exceptions

log = logging.getLogger(__name__)

LOGIN = "auth.login"
Timeout = float | tuple[float, float] | httpx.Timeout  # seconds, (connect, read), or httpx's own


class ApiClient:
    """A client of one server. Keyword arguments left None take their value from `settings` (a Config:
    what `from_config` passes), else from the built-in defaults."""

    auth = ServiceAttribute()
    debug = ServiceAttribute()
    users = ServiceAttribute()
    projects = ServiceAttribute()
    tasks = ServiceAttribute()
    queues = ServiceAttribute()
    workers = ServiceAttribute()
    events = ServiceAttribute()

    def __init__(
        self,
        host: str,
        access_key: str = "",
        secret_key: str = "",
        *,
        token: str | None = None,
        timeout: Timeout | None = None,
        max_retries: int | None = None,
        retry_forever_on_503: bool = False,
        backoff_factor: float | None = None,
        backoff_max: float | None = None,
        retry_codes: Iterable[int] | None = None,
        token_expiration_threshold_sec: float | None = None,
        request_token_expiration_sec: int | None = None,
        api_version: str | None = None,
        default_method: str | None = None,
        verify: bool | None = None,
        max_req_size: int | None = None,
        worker_header: str | None = None,
        user_agent: str | None = None,
        settings: Config | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        cfg = settings if settings is not None else defaults()

        def pick(value: Any, key: str) -> Any:
            return cfg.get(key) if value is None else value

        self.host = _strip_userinfo(host.rstrip("/"))  # credentials never travel in a URL
        if urlsplit(self.host).scheme not in ("http", "https") or not urlsplit(self.host).netloc:
            raise UserError(f"The API server address {self.host!r} is not an http:// or https:// URL — "
                                "set api.api_server or CLEARML_API_HOST")
        self._access_key = access_key or ""
        self._secret_key = secret_key or ""
        self._timeout = _as_timeout(timeout if timeout is not None else
                                    (cfg.get("api.http.connect_timeout_sec"), cfg.get("api.http.read_timeout_sec")))
        self.max_retries = int(pick(max_retries, "conveyor.client.max_retries"))
        self.retry_forever_on_503 = retry_forever_on_503
        self._backoff_factor = float(pick(backoff_factor, "api.http.retries.backoff_factor"))
        self._backoff_max = float(pick(backoff_max, "api.http.retries.backoff_max"))
        self._retry_codes = frozenset(int(c) for c in (retry_codes if retry_codes is not None else
                                      cfg.get("api.http.retry_codes") + cfg.get("api.http.extra_retry_codes")))
        self._threshold = float(pick(token_expiration_threshold_sec, "api.auth.token_expiration_threshold_sec"))
        self._token_lifetime = pick(request_token_expiration_sec, "api.auth.request_token_expiration_sec")
        self.api_version = api_version
        self.default_method = str(pick(default_method, "api.http.default_method")).upper()
        if self.default_method not in ("GET", "POST", "PUT"):
            raise UserError(f"api.http.default_method must be get, post or put, not {self.default_method.lower()!r}"
                                " — fix it in the config file or CLEARML_API_DEFAULT_REQ_METHOD")
        self._max_req_size = int(pick(max_req_size, "api.http.max_req_size"))
        self._credentials_hint = (f"check api.credentials in {display_path(cfg.path) if cfg.path else '~/clearml.conf'}"
                                  " or CLEARML_API_ACCESS_KEY/SECRET")
        worker = worker_header if worker_header is not None else socket.gethostname()
        # Every request goes to `host` (redirects are not followed): a plain-http server never needs a TLS context,
        # whose CA bundle costs ~30 ms to load in every process that makes a client.
        secure = urlsplit(self.host).scheme == "https"
        self._http = httpx.Client(
            transport=transport,
            verify=bool(pick(verify, "api.verify_certificate")) if secure else False,
            headers={"User-Agent": user_agent or f"conveyor-{__version__}",
                     "X-ClearML-Worker": worker, "X-Trains-Worker": worker},
        )
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._stale = False  # the server refused _token (401); it is kept only to log in again with it
        if token:
            try:
                self._token = Token.decode(token)
            except ValueError:
                raise AuthError(LOGIN, 0, 0, "the token given is not a JWT",
                                advice="The API token given (CLEARML_AUTH_TOKEN) is not a JWT — unset it, "
                                       f"or {self._credentials_hint}") from None

    @classmethod
    def from_config(cls, cfg: Config, **kw: Any) -> ApiClient:
        """A client of the server `cfg` names, with its credentials and HTTP settings; `kw` overrides."""
        kw.setdefault("settings", cfg)
        return cls(kw.pop("host", cfg.api_host), kw.pop("access_key", cfg.access_key),
                   kw.pop("secret_key", cfg.secret_key), **kw)

    # -- calls ------------------------------------------------------------------------------------------

    def call(self, endpoint: str, body: dict[str, Any] | None = None, *, version: str | None = None,
             method: str | None = None, timeout: Timeout | None = None) -> dict[str, Any]:
        """Call `endpoint` ("tasks.get_all") with a JSON body; returns the answer's `data`.
        A body with a numeric `wait` (a long-poll) gets that much more read time."""
        body = body if body is not None else {}
        wait = body.get("wait")
        poll_sec = float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0 else 0.0
        if timeout is None and poll_sec and self._timeout.read is not None:
            timeout = httpx.Timeout(self._timeout.read + poll_sec, connect=self._timeout.connect)
        return self._call(endpoint, orjson.dumps(body), "application/json", version, method, timeout)

    def call_lines(self, endpoint: str, events: list[dict[str, Any]], *, version: str | None = None,
                   method: str | None = None) -> dict[str, Any]:
        """Send events as JSON lines (`events.add_batch`), split so no request exceeds api.http.max_req_size.
        With several requests, the numbers in their answers (`added`, `errors`) are summed."""
        total: dict[str, Any] = {}
        for chunk in self._chunks(orjson.dumps(e) for e in events):
            data = self._call(endpoint, chunk, "application/json-lines", version, method, None)
            for key, value in data.items():
                summable = isinstance(value, (int, float)) and not isinstance(value, bool)
                total[key] = total.get(key, 0) + value if summable and key in total else value
        return total

    def _chunks(self, lines: Iterable[bytes]) -> Iterable[bytes]:
        batch: list[bytes] = []
        size = 0
        for line in lines:
            if batch and size + len(line) + 1 > self._max_req_size:
                yield b"\n".join(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line) + 1
        if batch:
            yield b"\n".join(batch)

    def _call(self, endpoint: str, content: bytes, content_type: str, version: str | None, method: str | None,
              timeout: Timeout | None) -> dict[str, Any]:
        version = version or self.api_version
        url = f"{self.host}/v{version}/{endpoint}" if version else f"{self.host}/{endpoint}"
        for attempt in range(2):  # a 401 gets one fresh login and one more try
            token = self._current_token()
            response = self._send(endpoint, (method or self.default_method).upper(), url, content=content,
                                  headers={"Authorization": f"Bearer {token.raw}", "Content-Type": content_type},
                                  timeout=timeout)
            if response.status_code != 401:
                return self._data(response, endpoint)
            if attempt == 0:
                self._drop_token(token)
        code, subcode, msg = self._error_of(response)
        raise AuthError(endpoint, code, subcode, msg,
                        advice=f"{endpoint} failed ({code}/{subcode}): {msg} — refused again after a fresh login; "
                               f"{self._credentials_hint}")

    # -- login ------------------------------------------------------------------------------------------

    @property
    def claims(self) -> dict[str, Any]:
        """The claims of the current token (logs in first if needed)."""
        return dict(self._current_token().claims)

    def auth_token(self) -> str:
        """The current session token (logs in first if needed): what a task gets instead of the key and secret."""
        return self._current_token().raw

    def server_supports(self, feature: str) -> bool:
        """Whether the server advertises a Conveyor feature ("long_poll") in its token; a ClearML server never does."""
        features = self.claims.get("conveyor_features")
        return isinstance(features, list) and feature in features

    def login(self) -> dict[str, Any]:
        """Log in now (rather than at the first call); returns the new token's claims."""
        with self._lock:
            self._token = self._login()
            self._stale = False
            return dict(self._token.claims)

    def _current_token(self) -> Token:
        token = self._token
        if token is None or self._stale or token.refresh_due(self._threshold):
            with self._lock:  # one thread logs in, the others then use its token
                token = self._token
                if token is None or self._stale or token.refresh_due(self._threshold):
                    self._token = token = self._login()
                    self._stale = False
        return token

    def _drop_token(self, rejected: Token) -> None:
        with self._lock:
            if self._token is rejected:  # another thread may have replaced it already
                self._stale = True

    def _login(self) -> Token:
        headers = {}
        if self._access_key or self._secret_key:
            basic = base64.b64encode(f"{self._access_key}:{self._secret_key}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        elif self._token is not None:  # a token given without key/secret is refreshed with itself
            headers["Authorization"] = f"Bearer {self._token.raw}"
        params = {"expiration_sec": int(self._token_lifetime)} if self._token_lifetime else None
        response = self._send(LOGIN, "GET", f"{self.host}/{LOGIN}", headers=headers, params=params)
        if response.status_code in (401, 403) or self._error_of(response)[0] in (401, 403):
            code, subcode, msg = self._error_of(response)
            what = ("no credentials are configured" if not headers else
                    "the token was refused" if headers["Authorization"].startswith("Bearer") else
                    "the access key or secret was refused")
            raise AuthError(LOGIN, code, subcode, msg,
                            advice=f"Login to {self.host} failed: {what} — {self._credentials_hint}")
        data = self._data(response, LOGIN)
        raw = data.get("token")
        if not isinstance(raw, str) or not raw:
            raise ApiCallError(LOGIN, 200, 0, f"the answer from {self.host} holds no token")
        try:
            return Token.decode(raw)
        except ValueError:
            raise ApiCallError(LOGIN, 200, 0, f"the token from {self.host} is not a JWT") from None

    # -- HTTP -------------------------------------------------------------------------------------------

    def _send(self, endpoint: str, method: str, url: str, *, headers: dict[str, str], content: bytes | None = None,
              params: dict[str, Any] | None = None, timeout: Timeout | None = None) -> httpx.Response:
        """One request, retried on connection errors and retryable answers; the last answer is returned."""
        effective = _as_timeout(timeout) if timeout is not None else self._timeout
        attempt = 0
        while True:
            try:
                response = self._request_once(endpoint, method, url, content=content, headers=headers,
                                              params=params, timeout=effective)
            except ServerUnreachable as unreachable:
                if attempt >= self.max_retries:
                    raise
                reason = unreachable.reason
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                forever = status == 503 and self.retry_forever_on_503
                if status not in self._retry_codes or (attempt >= self.max_retries and not forever):
                    return response
                reason = f"HTTP {status}"
                delay = _retry_after(response, self._backoff_max) or self._backoff(attempt)
            attempt += 1
            log.info("%s: %s, retry %d in %.1f s", endpoint, reason, attempt, delay)
            time.sleep(delay)

    def _request_once(self, endpoint: str, method: str, url: str, *, headers: dict[str, str], content: bytes | None,
                      params: dict[str, Any] | None, timeout: httpx.Timeout) -> httpx.Response:
        """One HTTP exchange; the boundary where httpx's errors become ours (their text redacted)."""
        with map_exceptions({
            httpx.TransportError: lambda exc: ServerUnreachable(self.host, self._redact(_reason(exc, timeout))),
            httpx.RequestError: lambda exc: ApiCallError(endpoint, 0, 0, self._redact(f"{type(exc).__name__}: {exc}")),
        }):
            return self._http.request(method, url, content=content, headers=headers, params=params, timeout=timeout)

    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_max, self._backoff_factor * (2 ** attempt))

    def _data(self, response: httpx.Response, endpoint: str) -> dict[str, Any]:
        payload = _json(response)
        meta = payload.get("meta") if isinstance(payload, dict) else None
        if not isinstance(meta, dict):
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            what = "not JSON" if payload is None else "JSON without a meta section"
            raise ApiCallError(endpoint, response.status_code, 0,
                               f"the answer from {self.host} is not a ClearML API answer (HTTP {response.status_code}, "
                               f"{kind}, {what}) — does api.api_server point at the API server?")
        code, subcode, msg = self._error_of(response, payload)
        if response.status_code >= 400 or code != 200:
            raise ApiCallError(endpoint, code, subcode, msg)
        data = payload.get("data")
        return data if isinstance(data, dict) else {}

    def _error_of(self, response: httpx.Response, payload: Any = None) -> tuple[int, int, str]:
        """(result_code, result_subcode, result_msg) of an answer; HTTP status and reason when it has no meta."""
        payload = _json(response) if payload is None else payload
        meta = payload.get("meta") if isinstance(payload, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        code = _int(meta.get("result_code"), response.status_code)
        subcode = _int(meta.get("result_subcode"), 0)
        msg = str(meta.get("result_msg") or response.reason_phrase or f"HTTP {response.status_code}")
        return code, subcode, self._redact(msg)

    def _redact(self, text: str) -> str:
        """Belt and braces for text the server or the network stack wrote: no secret or token in it."""
        token = self._token.raw if self._token else ""
        for secret in (self._secret_key, token):
            if len(secret) >= 6:  # a shorter one would mangle ordinary words, and is no real secret anyway
                text = text.replace(secret, "****")
        return text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ApiClient({self.host!r})"


def _as_timeout(value: Timeout) -> httpx.Timeout:
    if isinstance(value, httpx.Timeout):
        return value
    if isinstance(value, tuple):
        connect, read = value
        return httpx.Timeout(float(read), connect=float(connect))
    return httpx.Timeout(float(value))


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _int(value: Any, fallback: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return fallback


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    try:
        return min(cap, max(0.0, float(response.headers["retry-after"])))
    except (KeyError, ValueError):
        return None


def _reason(exc: BaseException, timeout: httpx.Timeout) -> str:
    """A few words on why there was no answer (never the URL: it is already in the message)."""
    text = str(exc).lower()
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {timeout.connect:g} s"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no answer within {timeout.read:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if any(s in text for s in ("name or service not known", "nodename nor servname", "getaddrinfo",
                                   "name resolution", "no address associated")):
            return "unknown host"
        if "ssl" in text or "certificate" in text:
            return "TLS handshake failed; api.verify_certificate: false accepts a self-signed certificate"
        return f"cannot connect: {exc}"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "the connection was dropped"
    return f"{type(exc).__name__}: {exc}"
