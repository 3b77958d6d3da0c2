"""The wire protocol (clearml-wire.md §1-2): URLs, methods, the envelope, JSON lines, auth, and bad input."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import orjson
import pytest

from _api import Raw, login, module_server, signing_key
from conftest import ServerProcess


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(request.param, tmp_path_factory.mktemp(f"protocol-{request.param}")) as proc:
        yield proc


@pytest.fixture(scope="module")
def raw(srv: ServerProcess) -> Raw:
    return Raw(srv)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- URLs, methods, envelope ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.5", "2.14", "2.23", None])
def test_versioned_and_unversioned_urls(raw: Raw, version: str | None) -> None:
    name = unique("q")
    qid = raw.ok("queues.create", {"name": name}, version=version)["id"]
    response = raw.request("queues.get_by_id", {"queue": qid}, version=version)
    payload = response.json()
    assert response.status_code == 200
    assert payload["data"]["queue"]["name"] == name
    endpoint = payload["meta"]["endpoint"]
    assert endpoint["name"] == "queues.get_by_id"
    # No version in the URL acts as the newest version.
    assert endpoint["requested_version"] == (version or "2.31")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_methods_all_read_the_json_body(raw: Raw, method: str) -> None:
    name = unique(f"m{method.lower()}")
    qid = raw.ok("queues.create", {"name": name}, method=method)["id"]
    # The body's filter must have been read: only our queue comes back.
    found = raw.ok("queues.get_all", {"name": f"^{name}$", "only_fields": ["id", "name"]}, method=method)["queues"]
    assert [q["id"] for q in found] == [qid]


def test_envelope_shape(raw: Raw) -> None:
    response = raw.request("debug.ping", {}, version="2.14")
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"meta", "data"}
    meta = payload["meta"]
    assert meta["result_code"] == 200 and meta["result_subcode"] == 0 and meta["result_msg"] == "OK"
    assert meta["endpoint"] == {"name": "debug.ping", "requested_version": "2.14", "actual_version": "2.14"}
    assert len(meta["id"]) == 32 and len(meta["trx"]) == 32
    assert meta["error_stack"] == "" and meta["error_data"] == {}
    assert isinstance(payload["data"], dict)


def test_error_envelope_shape(raw: Raw) -> None:
    response = raw.request("tasks.get_by_id", {"task": "0" * 32})
    payload = response.json()
    assert response.status_code == 400
    assert payload["meta"]["result_code"] == 400 and payload["meta"]["result_subcode"] == 101
    assert payload["meta"]["endpoint"]["name"] == "tasks.get_by_id"
    assert payload["data"] == {}


@pytest.mark.parametrize("path", ["tasks.no_such_action", "v2.23/nosuch.thing", "nonsense", "v2.5/tasks"])
def test_unknown_endpoint_is_404(srv: ServerProcess, raw: Raw, path: str) -> None:
    response = httpx.post(f"{srv.url}/{path}", content=b"{}",
                          headers={"Authorization": f"Bearer {raw.token}", "Content-Type": "application/json"})
    assert response.status_code == 404
    meta = response.json()["meta"]
    assert meta["result_code"] == 404 and meta["result_subcode"] == 0
    assert "Unable to find endpoint" in meta["result_msg"]


def test_unknown_endpoint_needs_no_token(srv: ServerProcess) -> None:
    response = httpx.get(f"{srv.url}/v2.23/tasks.frobnicate")
    assert response.status_code == 404
    assert "tasks.frobnicate" in response.json()["meta"]["result_msg"]


def test_unknown_body_fields_are_ignored(raw: Raw) -> None:
    # The SDK's stray "method" key and the extras both clients send.
    body = {"name": unique("t"), "type": "training", "method": "get", "search_hidden": False,
            "verify_watched_queue": False, "no_such_field": {"x": 1}}
    tid = raw.ok("tasks.create", body, method="GET", version="2.23")["id"]
    task = raw.ok("tasks.get_by_id", {"task": tid, "method": "get"}, method="GET")["task"]
    assert task["name"] == body["name"]
    assert "no_such_field" not in task and "method" not in task
    got = raw.ok("tasks.get_all", {"id": [tid], "only_fields": ["name"], "method": "get", "search_hidden": True,
                                   "shallow_search": False, "allow_locked": True})["tasks"]
    assert got == [{"id": tid, "name": body["name"]}]


@pytest.mark.parametrize("content_type", ["application/json-lines", "application/json-lines; charset=utf-8"])
def test_add_batch_as_json_lines(raw: Raw, content_type: str) -> None:
    tid = raw.ok("tasks.create", {"name": unique("jl")})["id"]
    events = [{"timestamp": int(time.time() * 1000), "type": "log", "task": tid, "level": "info",
               "worker": "host", "msg": f"line {i}\n", "method": "get", "allow_locked": False, "model_event": False}
              for i in range(3)]
    events.append({"timestamp": int(time.time() * 1000), "type": "training_stats_scalar", "task": tid, "iter": 4,
                   "metric": "loss", "variant": "train", "value": 0.5, "method": "get"})
    content = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    for method in ("GET", "POST"):  # the SDK sends GET, the agent POST
        data = raw.ok("events.add_batch", content=content, content_type=content_type, method=method)
        assert data["added"] == 4 and data["errors"] == 0
    log = raw.ok("events.get_task_log", {"task": tid, "order": "asc"})
    assert [e["msg"] for e in log["events"]] == [f"line {i}\n" for i in range(3)] * 2


def test_add_batch_single_json_line(raw: Raw) -> None:
    """One event, no newline: still a batch of one when the content type says JSON lines."""
    tid = raw.ok("tasks.create", {"name": unique("jl1")})["id"]
    content = orjson.dumps({"type": "log", "task": tid, "msg": "only\n", "timestamp": 1})
    assert raw.ok("events.add_batch", content=content, content_type="application/json-lines")["added"] == 1


# --- auth ----------------------------------------------------------------------------------------------------------
def test_login_token_claims(srv: ServerProcess) -> None:
    response = login(srv)
    assert response.status_code == 200
    token = response.json()["data"]["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["api_version"] == "2.31"
    assert claims["server_version"]
    assert claims["feature_set"] == "basic"
    assert claims["identity"]["user"] and claims["identity"]["company"]
    assert claims["exp"] - time.time() > 2 * 86400  # days, so neither client re-logs before every call
    assert "long_poll" in claims["conveyor_features"]
    # It verifies with the server's own key (HS256).
    jwt.decode(token, signing_key(srv), algorithms=["HS256"])


def test_login_expiration_sec(srv: ServerProcess) -> None:
    key, secret = srv.credentials()
    response = httpx.get(f"{srv.url}/auth.login", params={"expiration_sec": 3600}, auth=(key, secret))
    claims = jwt.decode(response.json()["data"]["token"], options={"verify_signature": False})
    assert 3500 < claims["exp"] - time.time() <= 3600


def test_login_refused(srv: ServerProcess) -> None:
    key, _ = srv.credentials()
    for response in (login(srv, key, "wrong-secret"), login(srv, "NOSUCHKEY", "x"),
                     httpx.get(f"{srv.url}/auth.login")):
        assert response.status_code == 401
        assert response.json()["meta"]["result_code"] == 401
        assert "token" not in response.json()["data"]


def test_bearer_refresh(srv: ServerProcess, raw: Raw) -> None:
    response = httpx.get(f"{srv.url}/auth.login", headers={"Authorization": f"Bearer {raw.token}"})
    assert response.status_code == 200
    fresh = response.json()["data"]["token"]
    assert Raw(srv, fresh).ok("users.get_current_user")["user"]["id"]


def _claims(raw: Raw) -> dict:
    return jwt.decode(raw.token, options={"verify_signature": False})


def test_no_token_is_401(srv: ServerProcess, raw: Raw) -> None:
    status, _, msg = raw.error("tasks.get_all", {}, auth=False)
    assert status == 401 and "auth.login" in msg
    response = httpx.post(f"{srv.url}/tasks.get_all", headers={"Authorization": "Bearer"})
    assert response.status_code == 401
    response = httpx.post(f"{srv.url}/tasks.get_all", headers={"Authorization": "Basic " + base64.b64encode(
        b"a:b").decode()})
    assert response.status_code == 401


def test_bad_signature_is_401(raw: Raw) -> None:
    forged = jwt.encode(_claims(raw), "not-the-key" * 4, algorithm="HS256")
    assert raw.error("tasks.get_all", {}, token=forged)[0] == 401
    assert raw.error("tasks.get_all", {}, token="not.a.jwt")[0] == 401
    assert raw.error("tasks.get_all", {}, token="garbage")[0] == 401
    # The real signature over other claims: tampered payload.
    header, _, signature = raw.token.split(".")
    payload = base64.urlsafe_b64encode(orjson.dumps({**_claims(raw), "exp": 9_999_999_999})).rstrip(b"=").decode()
    assert raw.error("tasks.get_all", {}, token=f"{header}.{payload}.{signature}")[0] == 401
    # Unsigned tokens are refused.
    unsigned = jwt.encode(_claims(raw), None, algorithm="none")
    assert raw.error("tasks.get_all", {}, token=unsigned)[0] == 401


def test_expired_token_is_401(srv: ServerProcess, raw: Raw) -> None:
    claims = {**_claims(raw), "iat": int(time.time()) - 7200, "exp": int(time.time()) - 60}
    expired = jwt.encode(claims, signing_key(srv), algorithm="HS256")
    status, _, msg = raw.error("tasks.get_all", {}, token=expired)
    assert status == 401 and "expired" in msg.lower()
    # A wrongly signed expired token too.
    assert raw.error("tasks.get_all", {}, token=jwt.encode(claims, "x" * 32, algorithm="HS256"))[0] == 401
    # The same claims with a future exp and the right key are accepted: the refusal was about exp.
    good = jwt.encode({**claims, "exp": int(time.time()) + 3600}, signing_key(srv), algorithm="HS256")
    assert Raw(srv, good).ok("tasks.get_all", {"page_size": 1}) is not None


def test_revoked_key_is_401(srv: ServerProcess, raw: Raw) -> None:
    creds = raw.ok("auth.create_credentials", {"label": "to revoke"})["credentials"]
    key, secret = creds["access_key"], creds["secret_key"]
    assert key in [c["access_key"] for c in raw.ok("auth.get_credentials")["credentials"]]
    response = login(srv, key, secret)
    assert response.status_code == 200
    other = Raw(srv, response.json()["data"]["token"])
    assert other.ok("users.get_current_user")["user"]["id"]
    assert raw.ok("auth.revoke_credentials", {"access_key": key})["revoked"] == 1
    assert other.error("tasks.get_all", {})[0] == 401
    assert login(srv, key, secret).status_code == 401
    assert key not in [c["access_key"] for c in raw.ok("auth.get_credentials")["credentials"]]
    # The server's own credentials still work.
    assert raw.ok("tasks.get_all", {"page_size": 1}) is not None


def test_debug_ping_needs_no_auth(srv: ServerProcess) -> None:
    response = httpx.get(f"{srv.url}/debug.ping")
    assert response.status_code == 200
    data = response.json()["data"]
    assert "long_poll" in data["conveyor"]["features"]
    assert data["api_version"] == "2.31"


# --- bad input: 400 with a message, never 500 ----------------------------------------------------------------------
@pytest.mark.parametrize("content", [b'{"name": ', b"{'name': 'x'}", b"\xff\xfe", b"nul", b'{"a": 1}}'])
def test_malformed_json_is_400(raw: Raw, content: bytes) -> None:
    status, _, msg = raw.error("tasks.get_all", content=content)
    assert status == 400 and "JSON" in msg


@pytest.mark.parametrize("content", [b"[1, 2]", b'"text"', b"5", b"null"])
def test_body_not_an_object_is_400(raw: Raw, content: bytes) -> None:
    if content == b"null":  # JSON null is no body at all; the reference clients never send it, accept or refuse
        response = raw.request("tasks.get_all", content=content)
        assert response.status_code in (200, 400)
        return
    status, _, msg = raw.error("tasks.get_all", content=content)
    assert status == 400 and "object" in msg


BAD_TYPES = [
    ("tasks.get_by_id", {"task": 5}, "task"),
    ("tasks.get_by_id", {"task": ["a"]}, "task"),
    ("tasks.get_by_id", {}, "task"),
    ("tasks.get_all", {"id": 5}, "id"),
    ("tasks.get_all", {"status": [1]}, "status"),
    ("tasks.get_all", {"tags": {"a": 1}}, "tags"),
    ("tasks.get_all", {"page": "first"}, "page"),
    ("tasks.get_all", {"page_size": 0}, "page_size"),
    ("tasks.get_all", {"page": 2 ** 63, "page_size": 5}, "page"),
    ("tasks.get_all", {"page": 2 ** 62, "page_size": 4}, "page"),
    ("tasks.get_all", {"only_fields": [1]}, "only_fields"),
    ("tasks.get_all", {"order_by": ["no_such_column"]}, "order"),
    ("tasks.get_all", {"search_hidden": "maybe"}, "search_hidden"),
    ("tasks.create", {"name": 5}, "name"),
    ("tasks.create", {"name": "x", "type": "nonsense"}, "type"),
    ("tasks.create", {"name": "x", "type": ["training"]}, "type"),
    ("tasks.create", {"name": "x", "script": "train.py"}, "script"),
    ("tasks.create", {"name": "x", "tags": [1, 2]}, "tags"),
    ("tasks.create", {"name": "x", "project": "0" * 32}, "project"),
    ("tasks.edit", {"task": "0" * 32, "hyperparams": 5}, ""),
    ("tasks.enqueue", {"task": 5}, "task"),
    ("tasks.set_requirements", {"task": "0" * 32, "requirements": "numpy"}, "requirements"),
    ("tasks.edit_hyper_params", {"task": "0" * 32, "hyperparams": [{"value": 1}]}, "name"),
    ("tasks.get_hyper_params", {"tasks": 5}, "tasks"),
    ("queues.create", {"name": {"x": 1}}, "name"),
    ("queues.get_next_task", {"queue": "0" * 32, "wait": "soon"}, "wait"),
    ("queues.get_next_task", {}, "queue"),
    ("queues.move_task_forward", {"queue": "0" * 32, "task": "0" * 32, "count": "x"}, "count"),
    ("workers.register", {"worker": "w-bad", "timeout": "long"}, "timeout"),
    ("workers.register", {"worker": "w-bad", "timeout": 10 ** 30}, "timeout"),
    ("workers.register", {"worker": 7}, "worker"),
    ("workers.status_report", {"worker": "w-bad", "machine_stats": [1]}, "machine_stats"),
    ("workers.set_runtime_properties", {"worker": "w-bad", "runtime_properties": [{"key": "k", "expiry": "soon"}]},
     "expiry"),
    ("workers.set_runtime_properties", {"worker": "w-bad", "runtime_properties": [{"value": "v"}]}, "key"),
    ("workers.get_stats", {"items": [5]}, "items"),
    ("workers.get_stats", {"from_date": "yesterday"}, "from_date"),
    ("events.add_batch", {"requests": 5}, "events"),
    ("events.get_task_log", {"task": "0" * 32, "order": "sideways"}, "order"),
    ("events.get_task_log", {"task": "0" * 32, "batch_size": -1}, "batch_size"),
    ("events.get_task_log", {"task": "0" * 32, "scroll_id": "abc"}, "scroll_id"),
    ("projects.create", {"name": ""}, "name"),
    ("projects.get_all", {"name": 5}, "name"),
    ("auth.revoke_credentials", {}, "access_key"),
    ("auth.login", {"expiration_sec": "x"}, "expiration_sec"),
]


@pytest.mark.parametrize("endpoint,body,word", BAD_TYPES, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(BAD_TYPES)])
def test_wrong_types_are_400(raw: Raw, endpoint: str, body: dict, word: str) -> None:
    if endpoint == "auth.login":  # login takes Basic auth, and its query/body option must be checked before it
        key, secret = raw.server.credentials()
        response = httpx.post(f"{raw.server.url}/auth.login", json=body, auth=(key, secret))
        assert response.status_code == 400 and word in response.json()["meta"]["result_msg"]
        return
    status, _, msg = raw.error(endpoint, body)
    assert status == 400, msg
    assert word.lower() in msg.lower(), msg


def test_string_only_fields_is_a_list_of_one(raw: Raw) -> None:
    """Decided: a single string where a list of strings is expected counts as a list of one (as the reference)."""
    tid = raw.ok("tasks.create", {"name": unique("of")})["id"]
    assert raw.ok("tasks.get_all", {"id": tid, "only_fields": "name"})["tasks"] == [
        {"id": tid, "name": raw.ok("tasks.get_by_id", {"task": tid})["task"]["name"]}]


@pytest.mark.parametrize("endpoint,body,subcode", [
    ("tasks.get_by_id", {"task": "0" * 32}, 101),
    ("tasks.edit", {"task": "0" * 32, "name": "x"}, 101),
    ("tasks.enqueue", {"task": "0" * 32}, 101),
    ("tasks.started", {"task": "0" * 32}, 101),
    ("tasks.get_by_id", {"task": "x" * 300}, 101),
    ("queues.get_by_id", {"queue": "0" * 32}, 701),
    ("queues.get_by_id", {"queue": "default-but-not-an-id"}, 701),
    ("queues.get_next_task", {"queue": "0" * 32}, 701),
    ("queues.delete", {"queue": "0" * 32}, 701),
    ("projects.get_by_id", {"project": "0" * 32}, 401),
])
def test_unknown_ids_are_400(raw: Raw, endpoint: str, body: dict, subcode: int) -> None:
    status, sub, msg = raw.error(endpoint, body)
    assert (status, sub) == (400, subcode)
    assert "id" in msg.lower()


def test_enqueue_to_unknown_queue_is_701(raw: Raw) -> None:
    tid = raw.ok("tasks.create", {"name": unique("eq")})["id"]
    assert raw.error("tasks.enqueue", {"task": tid, "queue": "0" * 32})[:2] == (400, 701)
    assert raw.ok("tasks.get_by_id", {"task": tid})["task"]["status"] == "created"


@pytest.mark.parametrize("pattern", ["(", "[a-", "*x", "a{2,1}", "(?P<n>a)(?P=n)", "a++", "(?<!x)y"])
@pytest.mark.parametrize("endpoint", ["tasks.get_all", "queues.get_all", "projects.get_all"])
def test_bad_regex_is_400(raw: Raw, endpoint: str, pattern: str) -> None:
    """Patterns that do not compile, or that compile in Python but not as a database regex: 400, never 500."""
    response = raw.request(endpoint, {"name": pattern})
    assert response.status_code in (200, 400), response.json()["meta"]
    if response.status_code == 400:
        assert "regular expression" in response.json()["meta"]["result_msg"].lower()
    if pattern in ("(", "[a-", "*x", "a{2,1}"):  # Python itself refuses these
        assert response.status_code == 400
    if pattern.startswith("(?P") and raw.server.db:  # PostgreSQL has no named groups
        assert response.status_code == 400


def test_overlong_names_are_400(raw: Raw) -> None:
    long = "n" * 5000
    for endpoint, body in (("tasks.create", {"name": long}), ("queues.create", {"name": long}),
                           ("projects.create", {"name": long}), ("workers.register", {"worker": long})):
        response = raw.request(endpoint, body)
        assert response.status_code in (200, 400), (endpoint, response.json()["meta"])
        if raw.server.db:  # PostgreSQL columns hold 512 characters; SQLite takes any length
            assert response.status_code == 400
            assert "too long" in response.json()["meta"]["result_msg"], response.json()["meta"]


def test_server_still_healthy_after_bad_input(srv: ServerProcess, raw: Raw) -> None:
    assert raw.ok("tasks.get_all", {"page_size": 1}) is not None
    assert "Traceback" not in srv.output()


# --- a sweep: any field of any call, given a value of the wrong type, is answered below 500 -------------------------
_KEY = re.compile(
    r"""(?:call\.(?:str|bool|int|float|str_list|dict|list|get)\(|body\.get\(|body\[)\s*["']([a-z_]+)["']""")
_COMMON_KEYS = ["only_fields", "order_by", "page", "page_size", "size", "scroll_id", "search_hidden", "tags",
                "system_tags", "id", "name", "status", "type", "project", "parent", "user"]
_INNER = {  # list fields whose items are objects: the keys of an item
    "hyperparams": ["name", "section", "value", "type", "description"],
    "configuration": ["name", "value", "type", "description"],
    "runtime_properties": ["key", "value", "expiry"],
    "artifacts": ["key", "mode", "type", "uri"],
    "items": ["key", "category"],
}
_INNER_ENDPOINTS = {
    "hyperparams": {"tasks.edit_hyper_params", "tasks.delete_hyper_params"},
    "configuration": {"tasks.edit_configuration"},
    "runtime_properties": {"workers.set_runtime_properties"},
    "artifacts": {"tasks.add_or_update_artifacts"},
    "items": {"workers.get_stats"},
}
_EVENT_KEYS = ["task", "type", "timestamp", "iter", "metric", "variant", "value", "level", "msg", "worker"]


def _endpoint_keys(endpoint: str) -> list[str]:
    """The body keys a service's code reads (a scan of its source), plus the query keys of get_all calls."""
    import inspect
    import sys

    from conveyor.server.services import load_all
    from conveyor.server.services.tasks import EDITABLE

    load_all()
    service = endpoint.split(".")[0]
    keys = set(_KEY.findall(inspect.getsource(sys.modules[f"conveyor.server.services.{service}"])))
    if service == "tasks":  # read through variables, not literals
        keys |= set(EDITABLE) | {"new_task_comment", "new_task_tags", "new_task_system_tags", "new_task_project",
                                 "new_task_hyperparams", "new_task_configuration", "new_task_container"}
    if "get_all" in endpoint or endpoint.startswith("events.get_"):
        keys |= set(_COMMON_KEYS)
    return sorted(keys)


def _fixtures(raw: Raw) -> dict:
    """Valid ids of every kind, so that a call gets past its lookups to the field under test."""
    suffix = uuid.uuid4().hex[:8]
    pid = raw.ok("projects.create", {"name": f"sweep-{suffix}"})["id"]
    qid = raw.ok("queues.create", {"name": f"sweep-{suffix}"})["id"]
    tid = raw.ok("tasks.create", {"name": "sweep", "project": pid, "script": {"entry_point": "a.py"}})["id"]
    raw.ok("tasks.enqueue", {"task": tid, "queue": qid})
    worker = f"sweep-{suffix}"
    raw.ok("workers.register", {"worker": worker, "queues": [qid]})
    raw.ok("workers.status_report", {"worker": worker, "task": tid, "machine_stats": {"cpu_usage": [1.0]}})
    raw.ok("events.add_batch", content=orjson.dumps({"type": "log", "task": tid, "msg": "x"}),
           content_type="application/json-lines")
    key = raw.ok("auth.create_credentials", {"label": "sweep"})["credentials"]["access_key"]
    return {"task": tid, "tasks": [tid], "queue": qid, "queues": [qid], "project": pid, "worker": worker,
            "access_key": key, "wait": 0, "hyperparams": [{"section": "S", "name": "a", "value": "1"}],
            "requirements": {"pip": "x"}, "runtime_properties": [{"key": "k", "value": "v"}],
            "configuration": [{"name": "c", "value": "v"}], "artifacts": [{"key": "a"}],
            "items": [{"key": "cpu_usage", "category": "avg"}]}


_SERVICES = ["auth", "events", "projects", "queues", "tasks", "users", "workers"]


@pytest.mark.parametrize("service", _SERVICES)
def test_no_500_for_wrong_types(srv: ServerProcess, raw: Raw, service: str) -> None:
    from conveyor.server.services import load_all

    # PostgreSQL adds only its own limits to what SQLite checks: a long string and a big number are enough there.
    values = ["x" * 700, 10 ** 15] if srv.db else [5, "x", [1], {"a": 1}, -1, 1e308]
    endpoints = sorted(e for e in load_all() if e.split(".")[0] == service and e != "auth.revoke_credentials")
    failures = []
    for endpoint in endpoints:
        base = _fixtures(raw)
        bodies = []
        for key in _endpoint_keys(endpoint):
            bodies += [(key, value, {**base, key: value}) for value in values]
        for field, inner in _INNER.items():
            if endpoint not in _INNER_ENDPOINTS[field]:
                continue
            for key in inner:
                bodies += [(f"{field}[0].{key}", value, {**base, field: [{**base[field][0], key: value}]})
                           for value in values]
        for body in (b for _, _, b in bodies):
            if endpoint == "queues.get_next_task" and not isinstance(body["wait"], (str, list, dict)):
                body["wait"] = 0  # keep long-polls short
        with ThreadPoolExecutor(8) as pool:
            responses = pool.map(lambda b: raw.request(endpoint, b[2]), bodies)
            for (where, value, _), response in zip(bodies, responses, strict=True):
                if response.status_code >= 500:
                    failures.append(f"{endpoint} {where}={str(value)[:20]}: {response.json()['meta']['result_msg']}")
    if service == "events":  # the events of a batch, one field wrong at a time
        tid = _fixtures(raw)["task"]
        event = {"type": "training_stats_scalar", "task": tid, "iter": 1, "metric": "m", "variant": "v",
                 "value": 1.0, "timestamp": 1, "level": "info", "msg": "m", "worker": "w"}
        for key in _EVENT_KEYS:
            for value in values:
                for kind in ("log", "training_stats_scalar", "plot"):
                    line = orjson.dumps({**event, "type": kind, key: value} if key != "type" else {**event, key: value})
                    response = raw.request("events.add_batch", content=line, content_type="application/json-lines")
                    if response.status_code >= 500:
                        failures.append(f"events.add_batch {line[:160]!r}: {response.json()['meta']['result_msg']}")
    assert not failures, "\n".join(failures[:40])
