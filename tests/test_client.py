"""conveyor.client against a real HTTP server on a loopback port that issues real HS256 JWTs."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
import pytest

from conveyor.client import SERVICES, ApiCallError, ApiClient, AuthError, ConveyorError, ServerUnreachable
from conveyor.config import load_config

ACCESS_KEY = "TESTACCESSKEY"
SECRET_KEY = "TEST-SECRET-do-not-leak-0123456789"
SIGNING_KEY = "server-side-signing-key-of-32-bytes-or-more"


@dataclass
class Seen:
    method: str
    path: str
    endpoint: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    payload: Any = None  # dict → JSON; bytes → sent as is; None → a success envelope echoing the request
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def envelope(endpoint: str, data: Any = None, code: int = 200, subcode: int = 0, msg: str = "OK") -> dict:
    return {"meta": {"id": "x", "trx": "x", "endpoint": {"name": endpoint}, "result_code": code,
                     "result_subcode": subcode, "result_msg": msg, "error_stack": "", "error_data": {}},
            "data": data if data is not None else {}}


class FakeServer:
    """A ClearML-shaped API: auth.login checks Basic key:secret (or a valid Bearer) and issues a JWT; every
    other call needs a valid, unrevoked Bearer. Replies can be scripted per endpoint."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.scripts: dict[str, list[Reply]] = {}
        self.token_lifetime: float | None = 30 * 24 * 3600
        self.with_iat = True
        self.extra_claims: dict[str, Any] = {}
        self.revoked_before = 0.0  # tokens issued before this time are refused
        self._serial = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

            do_POST = do_PUT = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def script(self, endpoint: str, *replies: Reply) -> None:
        self.scripts.setdefault(endpoint, []).extend(replies)

    def calls(self, endpoint: str) -> list[Seen]:
        return [s for s in self.seen if s.endpoint == endpoint]

    def issue(self) -> str:
        with self._lock:
            self._serial += 1
            now = time.time()
            claims = {"identity": {"user": "u1", "company": "c1"}, "api_version": "2.31", "server_version": "2.0.0",
                      "feature_set": "basic", "serial": self._serial, "issued": now, **self.extra_claims}
            if self.with_iat:
                claims["iat"] = int(now)
            if self.token_lifetime is not None:
                claims["exp"] = now + self.token_lifetime
            return jwt.encode(claims, SIGNING_KEY, algorithm="HS256")

    def token_ok(self, raw: str) -> bool:
        try:
            claims = jwt.decode(raw, SIGNING_KEY, algorithms=["HS256"])
        except jwt.PyJWTError:
            return False
        return claims["issued"] >= self.revoked_before

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        endpoint = parts.path.strip("/").split("/")[-1]
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        self.seen.append(Seen(req.command, parts.path, endpoint, parse_qs(parts.query),
                              {k.lower(): v for k, v in req.headers.items()}, body))
        auth = req.headers.get("Authorization", "")
        scripted = self.scripts.get(endpoint)
        if scripted:
            reply = scripted.pop(0)
        elif endpoint == "auth.login":
            basic = "Basic " + base64.b64encode(f"{ACCESS_KEY}:{SECRET_KEY}".encode()).decode()
            bearer_ok = auth.startswith("Bearer ") and self.token_ok(auth[7:])
            if auth == basic or bearer_ok:
                reply = Reply(payload=envelope(endpoint, {"token": self.issue()}))
            else:
                reply = Reply(401, envelope(endpoint, code=401, subcode=20, msg="Unauthorized (invalid credentials)"))
        elif not (auth.startswith("Bearer ") and self.token_ok(auth[7:])):
            reply = Reply(401, envelope(endpoint, code=401, subcode=21, msg="Invalid token"))
        else:
            reply = Reply()
        if reply.payload is None:
            content_type = req.headers.get("Content-Type", "")
            if content_type == "application/json-lines":
                events = [orjson.loads(line) for line in body.splitlines() if line]
                payload = envelope(endpoint, {"added": len(events), "errors": 0, "events": events})
            else:
                payload = envelope(endpoint, {"method": req.command, "body": orjson.loads(body) if body else None})
        else:
            payload = reply.payload
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        time.sleep(reply.delay)
        req.send_response(reply.status)
        req.send_header("Content-Type", reply.headers.pop("Content-Type", "application/json"))
        for key, value in reply.headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(raw)))
        req.end_headers()
        req.wfile.write(raw)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture
def make_client(server: FakeServer) -> Iterator[Callable[..., ApiClient]]:
    clients: list[ApiClient] = []

    def make(**kw: Any) -> ApiClient:
        kw.setdefault("backoff_factor", 0.01)
        client = ApiClient(kw.pop("host", server.url), kw.pop("access_key", ACCESS_KEY),
                           kw.pop("secret_key", SECRET_KEY), **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- login -----------------------------------------------------------------------------------------------


def test_lazy_login_then_bearer(server, make_client):
    client = make_client(worker_header="node-7")
    assert server.seen == []  # constructing logs in to nothing
    assert client.tasks.get_all(status=["queued"]) == {"method": "POST", "body": {"status": ["queued"]}}
    login, call = server.seen
    assert (login.method, login.path) == ("GET", "/auth.login")
    assert login.headers["authorization"].startswith("Basic ")
    assert login.body == b""
    assert (call.method, call.path) == ("POST", "/tasks.get_all")
    assert call.headers["authorization"].startswith("Bearer ")
    assert call.headers["content-type"] == "application/json"
    assert call.headers["x-clearml-worker"] == call.headers["x-trains-worker"] == "node-7"
    assert call.headers["user-agent"].startswith("conveyor-")
    client.queues.get_all()
    client.workers.get_all()
    assert len(server.calls("auth.login")) == 1


def test_claims_and_features(server, make_client):
    plain = make_client()
    assert plain.claims["api_version"] == "2.31"
    assert plain.claims["identity"]["user"] == "u1"
    assert plain.server_supports("long_poll") is False  # a real ClearML server has no such claim

    server.extra_claims = {"conveyor_features": ["long_poll"]}
    ours = make_client()
    assert ours.server_supports("long_poll") is True
    assert ours.server_supports("teleport") is False


def test_refresh_when_near_expiry(server, make_client):
    server.token_lifetime = 5
    server.with_iat = False  # no lifetime known: the threshold applies as is
    client = make_client(token_expiration_threshold_sec=60)
    for _ in range(3):
        client.tasks.get_all()
    assert len(server.calls("auth.login")) == 3
    assert len({s.headers["authorization"] for s in server.calls("tasks.get_all")}) == 3


def test_no_refresh_while_far_from_expiry(server, make_client):
    client = make_client(token_expiration_threshold_sec=60)
    for _ in range(3):
        client.tasks.get_all()
    assert len(server.calls("auth.login")) == 1


def test_short_tokens_do_not_cause_a_login_per_call(server, make_client):
    # a 1 h token with the agent's 12 h threshold: the reference logs in before every call
    server.token_lifetime = 3600
    client = make_client(token_expiration_threshold_sec=43200)
    for _ in range(3):
        client.tasks.get_all()
    assert len(server.calls("auth.login")) == 1


def test_one_fresh_login_after_a_401(server, make_client):
    client = make_client()
    client.tasks.get_all()
    time.sleep(0.01)
    server.revoked_before = time.time()  # e.g. the server restarted with a new session store
    assert client.tasks.get_all(x=1)["body"] == {"x": 1}
    assert len(server.calls("auth.login")) == 2
    first, second, third = server.calls("tasks.get_all")
    assert second.headers["authorization"] != third.headers["authorization"]


def test_401_twice_is_an_auth_error_without_a_loop(server, make_client):
    refused = envelope("tasks.get_all", code=401, subcode=21, msg="Invalid token")
    server.script("tasks.get_all", Reply(401, refused), Reply(401, refused), Reply(401, refused))
    client = make_client()
    with pytest.raises(AuthError) as err:
        client.tasks.get_all()
    assert len(server.calls("tasks.get_all")) == 2
    assert len(server.calls("auth.login")) == 2
    assert (err.value.endpoint, err.value.code, err.value.subcode) == ("tasks.get_all", 401, 21)
    assert str(err.value).startswith("tasks.get_all failed (401/21): Invalid token — refused again")
    assert SECRET_KEY not in str(err.value) + repr(err.value)


def test_login_refused(server, make_client):
    client = make_client(secret_key="wrong-secret-value")
    with pytest.raises(AuthError) as err:
        client.tasks.get_all()
    assert str(err.value) == (f"Login to {server.url} failed: the access key or secret was refused — check "
                              "api.credentials in ~/clearml.conf or CLEARML_API_ACCESS_KEY/SECRET")
    assert (err.value.code, err.value.subcode) == (401, 20)
    assert server.calls("tasks.get_all") == []
    assert "wrong-secret-value" not in str(err.value) + repr(err.value)


def test_no_credentials(server, make_client):
    client = make_client(access_key="", secret_key="")
    with pytest.raises(AuthError, match="failed: no credentials are configured"):
        client.tasks.get_all()
    assert "authorization" not in server.calls("auth.login")[0].headers


def test_login_error_names_the_config_file(server, tmp_path):
    conf = tmp_path / "my.conf"
    conf.write_text(f'api {{ api_server: "{server.url}", credentials {{ access_key: "{ACCESS_KEY}", '
                    'secret_key: "not-the-right-one" } }')
    cfg = load_config(conf, environ={"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "c")})
    with ApiClient.from_config(cfg) as client:
        assert client.host == server.url
        with pytest.raises(AuthError, match=rf"check api.credentials in {conf} or CLEARML_API_ACCESS_KEY"):
            client.tasks.get_all()


def test_from_config_uses_file_settings(server, tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f'api {{ api_server: "{server.url}/", credentials {{ access_key: "{ACCESS_KEY}", '
                    f'secret_key: "{SECRET_KEY}" }}, http.default_method: "put", '
                    'auth.request_token_expiration_sec: 7200 }')
    cfg = load_config(conf, environ={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")})
    with ApiClient.from_config(cfg, worker_header="w1") as client:
        assert client.projects.get_all()["method"] == "PUT"
    login = server.calls("auth.login")[0]
    assert login.query == {"expiration_sec": ["7200"]}
    assert server.calls("projects.get_all")[0].headers["x-clearml-worker"] == "w1"


def test_given_token_is_used_and_refreshed_with_itself(server, make_client):
    token = server.issue()
    client = make_client(access_key="", secret_key="", token=token)
    client.tasks.get_all()
    assert server.calls("auth.login") == []
    assert server.calls("tasks.get_all")[0].headers["authorization"] == f"Bearer {token}"

    server.token_lifetime = 5
    server.with_iat = False
    short = server.issue()
    client = make_client(access_key="", secret_key="", token=short, token_expiration_threshold_sec=60)
    client.tasks.get_all()
    assert server.calls("auth.login")[0].headers["authorization"] == f"Bearer {short}"


def test_given_token_that_is_no_jwt():
    with pytest.raises(AuthError, match="is not a JWT"):
        ApiClient("http://127.0.0.1:1", token="opaque-token")


def test_login_answer_without_a_jwt(server, make_client):
    server.script("auth.login", Reply(payload=envelope("auth.login", {"token": "not.a.jwt"})))
    with pytest.raises(ApiCallError, match=r"auth.login failed \(200/0\): the token from .* is not a JWT"):
        make_client().tasks.get_all()


def test_threads_share_one_login(server, make_client):
    client = make_client()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                client.tasks.get_all()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(server.calls("tasks.get_all")) == 40
    assert len(server.calls("auth.login")) == 1


# -- retries ---------------------------------------------------------------------------------------------


def test_503_is_retried_a_bounded_number_of_times(server, make_client):
    busy = envelope("tasks.get_all", code=503, msg="Service Unavailable")
    server.script("tasks.get_all", *[Reply(503, busy)] * 10)
    client = make_client(max_retries=3)
    with pytest.raises(ApiCallError) as err:
        client.tasks.get_all()
    assert len(server.calls("tasks.get_all")) == 4
    assert str(err.value) == "tasks.get_all failed (503/0): Service Unavailable"


def test_retry_then_success(server, make_client):
    server.script("tasks.get_all", Reply(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}),
                  Reply(504, b""), Reply(429, b"", {"Retry-After": "0"}))
    client = make_client(max_retries=3)
    assert client.tasks.get_all(a=1)["body"] == {"a": 1}
    assert len(server.calls("tasks.get_all")) == 4


def test_backoff_grows_and_is_capped(server, make_client):
    server.script("tasks.get_all", *[Reply(503, b"")] * 4)
    client = make_client(max_retries=4, backoff_factor=0.1, backoff_max=0.15)
    started = time.monotonic()
    client.tasks.get_all()
    elapsed = time.monotonic() - started
    assert 0.1 + 0.15 * 3 <= elapsed < 1.5  # 0.1, then 0.2/0.4/0.8 capped at 0.15


def test_503_forever_for_the_daemon(server, make_client):
    server.script("queues.get_next_task", *[Reply(503, b"")] * 6)
    client = make_client(max_retries=1, retry_forever_on_503=True, backoff_max=0.01)
    assert client.queues.get_next_task(queue="q")["body"] == {"queue": "q"}
    assert len(server.calls("queues.get_next_task")) == 7


def test_other_errors_are_not_retried(server, make_client):
    server.script("tasks.get_by_id", Reply(400, envelope("tasks.get_by_id", code=400, subcode=101,
                                                         msg="Invalid task id: id=abc")))
    client = make_client(max_retries=5)
    with pytest.raises(ApiCallError) as err:
        client.tasks.get_by_id(task="abc")
    assert str(err.value) == "tasks.get_by_id failed (400/101): Invalid task id: id=abc"
    assert (err.value.endpoint, err.value.code, err.value.subcode, err.value.msg) == (
        "tasks.get_by_id", 400, 101, "Invalid task id: id=abc")
    assert len(server.calls("tasks.get_by_id")) == 1


def test_error_code_inside_an_http_200(server, make_client):
    server.script("tasks.edit", Reply(200, envelope("tasks.edit", code=400, subcode=110, msg="Invalid task status")))
    with pytest.raises(ApiCallError, match=r"tasks.edit failed \(400/110\): Invalid task status"):
        make_client().tasks.edit(task="t")


def test_server_unreachable(make_client):
    port = closed_port()
    client = make_client(host=f"http://127.0.0.1:{port}", max_retries=2)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as err:
        client.tasks.get_all()
    assert time.monotonic() - started < 2
    assert str(err.value) == (f"Cannot reach the Conveyor server at http://127.0.0.1:{port} (connection refused) — "
                              "is `conveyor server` running? Set api.api_server or CLEARML_API_HOST")
    assert isinstance(err.value, ConveyorError)


def test_read_timeout_is_unreachable(server, make_client):
    server.script("tasks.get_all", Reply(delay=1.0), Reply(delay=1.0))
    client = make_client(timeout=(1, 0.3), max_retries=1)
    with pytest.raises(ServerUnreachable, match=r"\(no answer within 0.3 s\)"):
        client.tasks.get_all()


def test_long_poll_wait_extends_the_read_timeout(server, make_client):
    server.script("queues.get_next_task", Reply(delay=0.8))
    client = make_client(timeout=(1, 0.4), max_retries=0)
    assert client.queues.get_next_task(queue="q", wait=1)["body"] == {"queue": "q", "wait": 1}


# -- answers that are no answers -------------------------------------------------------------------------


def test_non_json_answer(server, make_client):
    server.script("tasks.get_all", Reply(200, b"<html>hello</html>", {"Content-Type": "text/html"}))
    with pytest.raises(ApiCallError) as err:
        make_client().tasks.get_all()
    assert str(err.value) == (f"tasks.get_all failed (200/0): the answer from {server.url} is not a ClearML API "
                              "answer (HTTP 200, text/html, not JSON) — does api.api_server point at the API server?")


def test_json_without_meta(server, make_client):
    server.script("tasks.get_all", Reply(200, {"data": {}}))
    with pytest.raises(ApiCallError, match="JSON without a meta section"):
        make_client().tasks.get_all()


def test_minimal_meta_is_enough(server, make_client):
    server.script("tasks.get_all", Reply(200, {"meta": {"result_code": 200, "result_msg": "OK"}, "data": {"n": 1}}))
    assert make_client().tasks.get_all() == {"n": 1}


# -- request shapes --------------------------------------------------------------------------------------


def test_get_with_a_json_body(server, make_client):
    client = make_client()
    assert client.call("tasks.get_all", {"id": ["a"]}, method="GET") == {"method": "GET", "body": {"id": ["a"]}}
    seen = server.calls("tasks.get_all")[0]
    assert seen.headers["content-type"] == "application/json"
    assert orjson.loads(seen.body) == {"id": ["a"]}


def test_version_in_the_url(server, make_client):
    make_client().call("tasks.get_all", version="2.23")
    make_client(api_version="2.5").call("queues.get_all")
    assert server.calls("tasks.get_all")[0].path == "/v2.23/tasks.get_all"
    assert server.calls("queues.get_all")[0].path == "/v2.5/queues.get_all"


def test_call_lines_sends_json_lines(server, make_client):
    events = [{"type": "log", "task": "t", "msg": f"line {i}", "level": "info"} for i in range(3)]
    data = make_client().call_lines("events.add_batch", events)
    seen = server.calls("events.add_batch")[0]
    assert seen.method == "POST"
    assert seen.headers["content-type"] == "application/json-lines"
    assert [orjson.loads(line) for line in seen.body.split(b"\n")] == events
    assert data["added"] == 3


def test_call_lines_splits_large_batches(server, make_client):
    events = [{"msg": "x" * 100, "i": i} for i in range(10)]
    client = make_client(max_req_size=400)  # three 117-byte events per request
    data = client.call_lines("events.add_batch", events)
    batches = server.calls("events.add_batch")
    assert [len(b.body.split(b"\n")) for b in batches] == [3, 3, 3, 1]
    assert all(len(b.body) <= 400 for b in batches)
    assert data["added"] == 10 and data["errors"] == 0


def test_services(server, make_client):
    client = make_client()
    assert client.queues.get_next_task(queue="q1")["body"] == {"queue": "q1"}
    assert server.calls("queues.get_next_task")[0].path == "/queues.get_next_task"
    assert set(SERVICES) == {"auth", "debug", "users", "projects", "tasks", "queues", "workers", "events"}
    for name in SERVICES:
        assert repr(getattr(client, name)) == f"<Service {name}>"
    with pytest.raises(AttributeError):
        client.models  # noqa: B018 - not a listed service
    with pytest.raises(AttributeError):
        client.tasks._secret_action  # noqa: B018


def test_host_checks():
    with pytest.raises(ConveyorError, match="'127.0.0.1:8008' is not an http:// or https:// URL"):
        ApiClient("127.0.0.1:8008")
    client = ApiClient("http://user:pw-in-url@127.0.0.1:1/")
    assert client.host == "http://127.0.0.1:1"
    with pytest.raises(ConveyorError, match="api.http.default_method must be get, post or put, not 'delete'"):
        ApiClient("http://127.0.0.1:1", default_method="delete")


# -- no secret anywhere ----------------------------------------------------------------------------------


def test_no_secret_in_urls_or_logs(server, make_client, caplog):
    caplog.set_level(logging.DEBUG)
    server.script("tasks.get_all", Reply(503, b""))
    client = make_client()
    client.tasks.get_all()
    token = server.calls("tasks.get_all")[0].headers["authorization"][7:]
    with pytest.raises(ApiCallError):
        make_client(secret_key=SECRET_KEY + "x").tasks.get_all()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "retry 1" in text  # the 503 was logged...
    for secret in (SECRET_KEY, token, base64.b64encode(f"{ACCESS_KEY}:{SECRET_KEY}".encode()).decode()):
        assert secret not in text  # ...and no secret was
        assert all(secret not in s.path and not any(secret in v for q in s.query.values() for v in q)
                   for s in server.seen)


def test_unset_arguments_come_from_the_config(server, tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f'api {{ api_server: "{server.url}", credentials {{ access_key: "{ACCESS_KEY}", '
                    f'secret_key: "{SECRET_KEY}" }}, http {{ read_timeout_sec: 0.3, retries.backoff_factor: 0.01 }} }}'
                    '\nconveyor.client.max_retries: 1')
    cfg = load_config(conf, environ={"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")})
    server.script("tasks.get_all", *[Reply(503, b"")] * 5)
    with ApiClient.from_config(cfg) as client:
        assert client.default_method == "POST"  # the built-in default, as the file names none
        with pytest.raises(ApiCallError, match=r"\(503/0\)"):
            client.tasks.get_all()
        assert len(server.calls("tasks.get_all")) == 2  # max_retries 1
        server.script("tasks.get_by_id", Reply(delay=0.6), Reply(delay=0.6))
        with pytest.raises(ServerUnreachable, match=r"no answer within 0.3 s"):
            client.tasks.get_by_id(task="t")
