"""No single request can stall the server or grow it without bound: name regexes, body size, nesting, answer size."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from _api import Raw
from conftest import ServerProcess

CATASTROPHIC_NAME = "a" * 27 + "!"


def ping_latencies(server: ServerProcess, while_running: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Runs `while_running` in a thread and pings the server every 20 ms meanwhile; returns its result and the
    ping round trips in seconds."""
    result: list[Any] = []
    def run() -> None:
        try:
            result.append(while_running())
        except BaseException as exc:  # reported by the caller, with the pings measured so far
            result.append(exc)

    worker = threading.Thread(target=run)
    latencies: list[float] = []
    with httpx.Client(timeout=10) as http:
        http.get(f"{server.url}/debug.ping")  # the connection is open before the measurement starts
        worker.start()
        time.sleep(0.05)  # the slow request is in the server
        while worker.is_alive():
            sent = time.monotonic()
            assert http.get(f"{server.url}/debug.ping").status_code == 200
            latencies.append(time.monotonic() - sent)
            time.sleep(0.02)
    worker.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0], latencies


@pytest.fixture
def limited(tmp_path: Path, db_url: str | None) -> Iterator[ServerProcess]:
    """A server with small limits, so that the tests reach them quickly. PostgreSQL's regex engine settles even
    nested repetitions quickly (its worst costs tens of milliseconds), so there the budget is that small."""
    proc = ServerProcess(tmp_path / "home", db=db_url, extra_env={
        "CONVEYOR__SERVER__NAME_FILTER_TIMEOUT_SEC": "0.04" if db_url else "0.5",
        "CONVEYOR__SERVER__MAX_REQUEST_BODY_MB": "8",
        "CONVEYOR__SERVER__DEFAULT_PAGE_SIZE": "50",
        "CONVEYOR__SERVER__MAX_PAGE_SIZE": "200",
    }).start()
    yield proc
    proc.stop()


# --- name filters -----------------------------------------------------------------------------------------------------
def test_catastrophic_name_pattern_is_refused_without_stalling_the_server(limited: ServerProcess) -> None:
    raw = Raw(limited)
    pid = raw.ok("projects.create", {"name": CATASTROPHIC_NAME})["id"]
    raw.ok("queues.create", {"name": CATASTROPHIC_NAME})
    for _ in range(30):
        raw.ok("tasks.create", {"name": CATASTROPHIC_NAME, "project": pid})
    # Python's engine (SQLite calls back into Python per row) backtracks exponentially on the first; PostgreSQL's
    # spends about 90 ms building the automaton of the second.
    pattern = "(a{1,200}){1,200}b" if limited.db else "^(a|a)+$"

    for endpoint in ("tasks.get_all", "projects.get_all", "queues.get_all"):
        def slow_call() -> tuple[float, tuple[int, int, str]]:
            started = time.monotonic()
            answer = Raw(limited, raw.token).error(endpoint, {"name": pattern})
            return time.monotonic() - started, answer

        (took, (status, _, msg)), pings = ping_latencies(limited, slow_call)
        assert status == 400, msg
        assert "too expensive" in msg and "name_filter_timeout_sec" in msg
        assert took < 3.0, f"{endpoint}: the refusal took {took:.1f} s"
        if endpoint == "tasks.get_all":
            assert pings, "no ping was sent while the pattern was evaluated"
        assert max(pings, default=0) < 0.2, f"{endpoint}: a ping waited {max(pings):.2f} s behind the pattern"

    # Nested repetition the engine can settle without backtracking (6 s with Python's re) answers at once.
    started = time.monotonic()
    assert raw.ok("tasks.get_all", {"name": "^(a+)+$", "project": [pid]})["tasks"] == []
    assert time.monotonic() - started < 1.0
    # Ordinary patterns, as the agent and the SDK send them, still work.
    assert len(raw.ok("tasks.get_all", {"name": "^a+!$", "project": [pid]})["tasks"]) == 30
    assert raw.error("tasks.get_all", {"name": "(unclosed"})[0] == 400


# --- request bodies ---------------------------------------------------------------------------------------------------
def test_oversized_body_is_refused_while_it_streams(limited: ServerProcess) -> None:
    raw = Raw(limited)
    process = psutil.Process(limited.proc.pid)
    before = process.memory_info().rss
    body = b'{"name": "' + b"x" * (64 * 1024 * 1024) + b'"}'  # 64 MB against a limit of 8 MB

    def send(content: Any) -> httpx.Response:
        return httpx.post(f"{limited.url}/tasks.create", content=content, timeout=60,
                          headers={"Authorization": f"Bearer {raw.token}", "Content-Type": "application/json"})

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, so only counting while it streams can tell
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    for content in (body, chunks()):
        response, pings = ping_latencies(limited, lambda content=content: send(content))
        assert response.status_code == 413
        msg = response.json()["meta"]["result_msg"]
        assert "at most 8 MB" in msg and "conveyor.server.max_request_body_mb" in msg
        assert max(pings, default=0) < 0.2, f"a ping waited {max(pings):.2f} s behind the upload"
    assert process.memory_info().rss - before < 32 * 1024 * 1024, "the refused body was held in memory"
    # The connection is still usable and a body under the limit is served.
    assert raw.ok("tasks.create", {"name": "y" * 500, "comment": "z" * (4 * 1024 * 1024)})["id"]


def test_deeply_nested_body_is_a_clear_400(limited: ServerProcess) -> None:
    raw = Raw(limited)

    def nested(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {"leaf": 1}
        for _ in range(depth - 1):
            value = {"k": value}
        return value

    status, _, msg = raw.error("tasks.create", {"name": "deep", "runtime": nested(300)})
    assert status == 400
    assert "more than 100 levels" in msg and "max_json_depth" in msg
    tid = raw.ok("tasks.create", {"name": "fine", "runtime": nested(50)})["id"]
    assert raw.ok("tasks.get_by_id", {"task": tid})["task"]["runtime"] == nested(50)
    # A configuration item holds name, value, type and description: anything else is refused, never dropped.
    status, _, msg = raw.error("tasks.create", {"name": "odd", "configuration": {"k": {"value": "x", "k": {}}}})
    assert status == 400 and "unknown field(s) 'k'" in msg
    events = "\n".join(json.dumps({"type": "log", "task": tid, "msg": "m", "x": nested(150)}) for _ in range(2))
    assert raw.error("events.add_batch", content=events.encode(), content_type="application/json-lines")[0] == 400


# --- answer sizes -----------------------------------------------------------------------------------------------------
def test_get_all_pages_by_default_and_caps_page_size(limited: ServerProcess) -> None:
    raw = Raw(limited)
    pid = raw.ok("projects.create", {"name": "paged"})["id"]
    ids = {raw.ok("tasks.create", {"name": f"t{i}", "project": pid})["id"] for i in range(120)}
    assert len(raw.ok("tasks.get_all", {"project": [pid]})["tasks"]) == 50  # conveyor.server.default_page_size
    status, _, msg = raw.error("tasks.get_all", {"project": [pid], "page": 0, "page_size": 201})
    assert status == 400 and "maximum page size of 200" in msg and "conveyor.server.max_page_size" in msg
    # The SDK's loop: pages until one comes back short.
    seen: list[str] = []
    for page in range(10):
        batch = raw.ok("tasks.get_all", {"project": [pid], "page": page, "page_size": 200, "only_fields": ["id"]})
        seen += [t["id"] for t in batch["tasks"]]
        if len(batch["tasks"]) < 200:
            break
    assert set(seen) == ids and len(seen) == len(ids)
    # Asking by id (the agent's and the SDK's status checks) gets every task named.
    assert {t["id"] for t in raw.ok("tasks.get_all", {"id": sorted(ids), "only_fields": ["id"]})["tasks"]} == ids


def test_large_answer_does_not_stall_the_server_nor_keep_its_memory(tmp_path: Path) -> None:
    """20 000 tasks in one answer (by id: no default page applies) on SQLite: pings go on, memory comes back."""
    from conveyor.server.store import Store
    from conveyor.server.store.documents import insert_task

    server = ServerProcess(tmp_path / "home").start()
    try:
        raw = Raw(server)
        template = raw.ok("tasks.get_by_id", {"task": raw.ok("tasks.create", {"name": "template"})["id"]})["task"]
        # The fast path: the server's own document writer, straight into its database (WAL: the server runs on).
        store = Store(f"sqlite:///{server.home / '.conveyor' / 'conveyor.db'}")
        ids = [f"{i:032x}" for i in range(20_000)]
        with store.write() as conn:
            for tid in ids:
                insert_task(conn, {**template, "id": tid, "name": f"bulk-{tid}", "comment": "c" * 400})
        store.dispose()
        process = psutil.Process(server.proc.pid)
        raw.ok("tasks.get_all", {"id": ids[:100]})  # warm: caches and pools as in steady use
        baseline = process.memory_info().rss

        def big() -> bytes:  # read, not parsed: parsing 20 MB here would hold this process's GIL from the pings
            with httpx.Client(timeout=60) as http:
                response = http.post(f"{server.url}/tasks.get_all", json={"id": ids},
                                     headers={"Authorization": f"Bearer {raw.token}"})
            assert response.status_code == 200
            return response.content

        answer, pings = ping_latencies(server, big)
        assert len(json.loads(answer)["data"]["tasks"]) == len(ids)
        del answer
        # The answer is built in a thread, but orjson holds the GIL while it writes the 20 MB (0.15-0.25 s on our
        # machines): a ping may wait that long, never the seconds the whole call takes.
        assert max(pings, default=0) < 0.5, f"a ping waited {max(pings):.2f} s behind the 20k-task answer"
        time.sleep(0.5)
        grown = process.memory_info().rss - baseline
        assert grown < 30 * 1024 * 1024, f"the server kept {grown / 2**20:.0f} MB after the answer"
    finally:
        server.stop()
