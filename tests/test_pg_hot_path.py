"""PostgreSQL's hot calls on the event loop (store/async_pg.py): the enqueue that saves a task only if it is still as
it read it, and what happens when the database drops every connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import Connection

from conftest import ServerProcess
from conveyor.protocol.errors import ApiError
from conveyor.server.auth import Identity
from conveyor.server.call import Call
from conveyor.server.codec import Document, dumps
from conveyor.server.model import queues, tasks
from conveyor.server.services import load_all
from conveyor.server.state import ServerState
from conveyor.server.store import Store, known_docs
from conveyor.server.store.async_pg import AsyncPg
from conveyor.server.store.documents import entries_of, get_task, insert_task, save_task

ADMIN = Identity(user="u-admin", user_name="admin", company="c", access_key="K", role="admin")


class Meddling(AsyncPg):
    """Runs `meddle` once, just before the enqueue's write: another client's change landing between read and write."""

    def __init__(self, dsn: str, meddle: Callable[[], None]):
        super().__init__(dsn)
        self.meddle: Callable[[], None] | None = meddle
        self.statements: list[str] = []

    async def fetch(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.statements.append(name)
        if name == "enqueue_write" and self.meddle is not None:
            meddle, self.meddle = self.meddle, None
            await asyncio.to_thread(meddle)
        return await super().fetch(name, params)


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    opened = Store(pg_url)
    opened.migrate()
    yield opened
    opened.dispose()


def _task_and_queue(store: Store) -> tuple[str, str]:
    with store.write() as conn:
        queue = queues.create(conn, "hot", user=ADMIN.user, company="c", tags=[], system_tags=[])
        doc = tasks.new_task("hot", "training", user=ADMIN.user, company="c")
        insert_task(conn, doc)
    return doc["id"], queue


def _changing(store: Store, task: str, change: Callable[[Connection, Document], None]) -> Callable[[], None]:
    """Another client's change of the task, in a transaction of its own."""
    def run() -> None:
        with store.write() as conn:
            doc = get_task(conn, task, lock=True)
            assert doc is not None
            change(conn, doc)

    return run


def _on_loop(store: Store, pg: AsyncPg, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """`endpoint` answered as the server answers it, with `pg` as the event loop's connections."""
    async def run() -> dict[str, Any]:
        await pg.open()
        store.on_loop = pg
        try:
            state = ServerState(store, None, SimpleNamespace(long_poll_max_sec=30.0, retry_elsewhere_sec=30.0))  # type: ignore[arg-type]
            state.known_queues.update(q for q in (body.get("queue"),) if q)
            call = Call(endpoint, "2.31", body, state, identity=ADMIN)
            return await load_all()[endpoint].handler(call)  # type: ignore[no-any-return]
        finally:
            store.on_loop = None
            await pg.close()

    return asyncio.run(run())


def _enqueue(store: Store, pg: AsyncPg, task: str, queue: str) -> dict[str, Any]:
    return _on_loop(store, pg, "tasks.enqueue", {"task": task, "queue": queue})


def test_an_enqueue_keeps_a_change_made_between_its_read_and_its_write(store: Store) -> None:
    task, queue = _task_and_queue(store)

    def rename(conn: Connection, doc: Document) -> None:
        doc["name"] = "renamed meanwhile"
        save_task(conn, doc)

    pg = Meddling(store.pg_dsn, _changing(store, task, rename))
    answer = _enqueue(store, pg, task, queue)
    assert answer["queued"] == 1 and answer["fields"]["status"] == "queued"
    # It knew the task (it created it), so it wrote at once; that write found the task changed and saved nothing.
    assert pg.statements == ["enqueue_write", "enqueue_read", "enqueue_write"]
    with store.read() as conn:
        doc = get_task(conn, task)
        entries = entries_of(conn, [queue])[queue]
    assert doc is not None and (doc["name"], doc["status"]) == ("renamed meanwhile", "queued")
    assert [e["task"] for e in entries] == [task]


def test_a_task_started_between_the_read_and_the_write_is_not_enqueued(store: Store) -> None:
    task, queue = _task_and_queue(store)

    def start(conn: Connection, doc: Document) -> None:
        tasks.set_status(conn, doc, "in_progress", force=True, user=ADMIN.user)

    with pytest.raises(ApiError) as refused:
        _enqueue(store, Meddling(store.pg_dsn, _changing(store, task, start)), task, queue)
    assert refused.value.code == 400 and "only a task that is not running can be enqueued" in refused.value.msg
    with store.read() as conn:
        doc = get_task(conn, task)
        assert doc is not None and doc["status"] == "in_progress"
        assert entries_of(conn, [queue])[queue] == []


def test_a_stale_copy_of_a_task_never_refuses_an_enqueue(store: Store) -> None:
    """This process's copy says the task is queued (another server process has dequeued it since): the enqueue reads
    the task before it refuses anything, and enqueues it."""
    task, queue = _task_and_queue(store)
    with store.read() as conn:
        stale = get_task(conn, task)
    assert stale is not None
    stale["status"] = "queued"
    known_docs.TASKS.remember(task, dumps(stale))
    pg = Meddling(store.pg_dsn, lambda: None)
    assert _enqueue(store, pg, task, queue)["fields"]["status"] == "queued"
    assert pg.statements == ["enqueue_read", "enqueue_write"]


def test_an_enqueue_onto_a_full_queue_is_refused_even_when_the_task_is_known(store: Store) -> None:
    task, queue = _task_and_queue(store)
    with store.write() as conn:
        limited = queues.create(conn, "small", user=ADMIN.user, company="c", tags=[], system_tags=[], max_entries=1)
        other = tasks.new_task("first", "training", user=ADMIN.user, company="c")
        insert_task(conn, other)
        tasks.enqueue(conn, other, limited, user=ADMIN.user, force=False, reason="", message="")
    pg = Meddling(store.pg_dsn, lambda: None)
    with pytest.raises(ApiError) as refused:
        _enqueue(store, pg, task, limited)
    assert refused.value.code == 400 and "is full" in refused.value.msg
    assert pg.statements == ["enqueue_write", "enqueue_read"]  # then the locked path, which counts the entries
    with store.read() as conn:
        doc = get_task(conn, task)
        assert doc is not None and doc["status"] == "created"
        assert [e["task"] for e in entries_of(conn, [limited])[limited]] == [other["id"]]


def test_queues_and_tasks_that_the_fast_path_cannot_take_are_enqueued_all_the_same(store: Store) -> None:
    """A queue whose document holds what PostgreSQL's jsonb refuses (a NUL escape in its display name, which any user
    may set), and a task document too large to handle on the event loop (it goes to the locked path, in a thread)."""
    with store.write() as conn:
        odd = queues.create(conn, "odd", user=ADMIN.user, company="c", tags=[], system_tags=[],
                            display_name="nul \u0000 here")
        big = tasks.new_task("big", "training", user=ADMIN.user, company="c")
        big["script"] = {"diff": "+" + "x" * (known_docs.MAX_DOC_BYTES + 1)}
        insert_task(conn, big)
    task, _ = _task_and_queue(store)
    assert _enqueue(store, Meddling(store.pg_dsn, lambda: None), task, odd)["queued"] == 1
    pg = Meddling(store.pg_dsn, lambda: None)
    assert _enqueue(store, pg, big["id"], odd)["queued"] == 1
    assert pg.statements == ["enqueue_read"]  # not known, not fetched: the locked path did the rest
    with store.read() as conn:
        assert [e["task"] for e in entries_of(conn, [odd])[odd]] == [task, big["id"]]


def test_a_pop_with_task_info_names_the_owner_whatever_the_document_holds(store: Store) -> None:
    task, queue = _task_and_queue(store)
    with store.write() as conn:
        odd = tasks.new_task("odd", "training", user=ADMIN.user, company="c")
        odd["hyperparams"] = {"Args": {"sep": {"value": "\x00"}}}  # stored as \u0000, which json cannot read
        insert_task(conn, odd)
        for each in (task, odd["id"]):
            doc = get_task(conn, each, lock=True)
            assert doc is not None
            tasks.enqueue(conn, doc, queue, user=ADMIN.user, force=False, reason="", message="")
    for expected in (task, odd["id"]):
        pg = Meddling(store.pg_dsn, lambda: None)
        answer = _on_loop(store, pg, "queues.get_next_task", {"queue": queue, "get_task_info": True})
        assert answer["entry"]["task"] == expected
        assert answer["task_info"] == {"company": "c", "user": ADMIN.user}
        assert pg.statements == ["pop_and_deliver", "task_owner"]


def test_calls_come_back_after_the_database_drops_every_connection(tmp_path: Path, pg_url: str) -> None:
    """As after a restart of PostgreSQL: each call answers or asks to be retried (503), none fails with a 500, and
    within a few retries enqueues and pops work again on both the event loop's connections and the threads'."""
    server = ServerProcess(tmp_path / "home", db=pg_url).start()
    try:
        api = server.client()
        queue = api.call("queues.create", {"name": "after-drop"})["id"]
        made = [api.call("tasks.create", {"name": f"t{i}", "type": "training"})["id"] for i in range(6)]
        key, secret = server.credentials()
        token = httpx.get(f"{server.url}/auth.login", auth=(key, secret)).json()["data"]["token"]
        raw = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
        raw.post("/tasks.enqueue", json={"task": made[0], "queue": queue}).raise_for_status()  # pools in use

        with psycopg.connect(pg_url, autocommit=True) as admin:
            dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND pid <> pg_backend_pid()").fetchone()
        assert dropped is not None and dropped[0] >= 2

        statuses: list[int] = []

        def until_ok(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            for _ in range(20):
                answer = raw.post(f"/{endpoint}", json=body)
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    return answer.json()["data"]  # type: ignore[no-any-return]
                assert answer.status_code == 503, answer.text
                assert answer.json()["meta"]["result_msg"] == "Database unavailable, retry later"
                time.sleep(0.1)
            raise AssertionError(f"{endpoint} still failing after 20 tries: {statuses}")

        for task in made[1:]:
            until_ok("tasks.enqueue", {"task": task, "queue": queue})
        popped = [until_ok("queues.get_next_task", {"queue": queue})["entry"]["task"] for _ in made]
        assert sorted(popped) == sorted(made)
        assert until_ok("tasks.get_by_id", {"task": made[0]})["task"]["status"] == "queued"  # the threads' pool too
        assert set(statuses) <= {200, 503}
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.stop()


def test_a_slow_read_of_the_credentials_leaves_the_event_loop_free(tmp_path: Path, pg_url: str) -> None:
    """Every few seconds a server re-reads the credentials (revocations, role changes); on PostgreSQL that read is
    made off the event loop. While it waits (here: on a lock a psql session holds), logged-in calls wait for it (an
    identity is never served stale), but the loop stays free: health checks answer, and answers in flight go out."""
    server = ServerProcess(tmp_path / "home", db=pg_url).start()
    try:
        api = server.client()
        queue = api.call("queues.create", {"name": "locked-out"})["id"]
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE")
            time.sleep(2.5)  # past the server's refresh interval: the next authorized call reads the credentials
            waiting: dict[str, Any] = {}
            reader = threading.Thread(target=lambda: waiting.update(
                api.call("queues.get_next_task", {"queue": queue}, timeout=30) or {"answered": True}))
            reader.start()
            time.sleep(0.5)
            began = time.monotonic()
            assert httpx.get(f"{server.url}/debug.ping", timeout=10).status_code == 200
            assert time.monotonic() - began < 1.0
            assert reader.is_alive()  # still waiting on the lock
            blocker.rollback()
        reader.join(20)
        assert waiting == {"answered": True}
    finally:
        server.stop()
