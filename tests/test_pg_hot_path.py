"""PostgreSQL's hot calls on the event loop (store/async_pg.py): the enqueue that saves a task only if it is still as
it read it, and what happens when the database drops every connection."""

from __future__ import annotations

import asyncio
import re
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
from sqlalchemy.exc import DataError, OperationalError

from conftest import ServerProcess
from conveyor.protocol.errors import ApiError
from conveyor.server.auth import Identity
from conveyor.server.call import Call
from conveyor.server.codec import Document, dumps, loads
from conveyor.server.model import queues, tasks
from conveyor.server.services import load_all
from conveyor.server.state import ServerState
from conveyor.server.store import Store, known_docs, notify
from conveyor.server.store.async_pg import AsyncPg, Pop, PopRequest
from conveyor.server.store.documents import entries_of, get_task, insert_task, save_task, task_columns
from conveyor.server.store.notify import CATCH_UP_SEC, HELLO, LISTENER_APP, PEERS_CHECK_SEC, PgListener, QueueSignals
from conveyor.server.store.sql import LOCK_TIMEOUT_MS, statement

ADMIN = Identity(user="u-admin", user_name="admin", company="c", access_key="K", role="admin")


class Meddling(AsyncPg):
    """Runs `meddle` once, just before the write (`before`): another client's change landing between read and write."""

    def __init__(self, dsn: str, meddle: Callable[[], None], before: str = "enqueue_write"):
        super().__init__(dsn)
        self.meddle: Callable[[], None] | None = meddle
        self.before = before
        self.statements: list[str] = []

    async def fetch(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.statements.append(name)
        if name == self.before and self.meddle is not None:
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
    return _all_on_loop(store, pg, [(endpoint, body)])[0]


def _all_on_loop(store: Store, pg: AsyncPg, calls: list[tuple[str, dict[str, Any]]],
                 identities: list[Identity] | None = None) -> list[dict[str, Any]]:
    """The calls made at once (in this order), answered as the server answers them."""
    async def run() -> list[dict[str, Any]]:
        await pg.open()
        store.on_loop = pg
        try:
            state = ServerState(store, None, SimpleNamespace(long_poll_max_sec=30.0, retry_elsewhere_sec=30.0))  # type: ignore[arg-type]
            state.known_queues.update(q for _, body in calls for q in [body.get("queue"), *body.get("queues", [])] if q)
            handlers = load_all()
            return list(await asyncio.gather(*(
                handlers[endpoint].handler(Call(endpoint, "2.31", body, state, identity=who))
                for (endpoint, body), who in zip(calls, identities or [ADMIN] * len(calls), strict=True))))
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


def _log(task: str, lines: list[str], run: str = "r1") -> dict[str, Any]:
    return {"requests": [{"type": "log", "task": task, "level": "info", "worker": "w", "msg": line,
                          "conveyor_id": f"{run}-{n}"} for n, line in enumerate(lines)]}


def _stored_log(store: Store, task: str) -> list[str]:
    with store.read() as conn:
        return [r[0] for r in conn.exec_driver_sql(
            "SELECT msg FROM events WHERE task = %(t)s ORDER BY seq", {"t": task}).all()]


def test_a_log_batch_is_one_statement_that_keeps_a_change_made_meanwhile(store: Store) -> None:
    """A log batch on the event loop saves the task's last_update only if the task is still as this process knew it,
    and stores its lines in the same statement; a change landing between (a rename) survives, and a batch sent again
    (its answer lost) adds nothing twice."""
    task, _ = _task_and_queue(store)
    with store.read() as conn:
        before = get_task(conn, task)
    assert before is not None

    def rename(conn: Connection, doc: Document) -> None:
        doc["name"] = "renamed meanwhile"
        save_task(conn, doc)

    time.sleep(0.01)
    pg = Meddling(store.pg_dsn, _changing(store, task, rename), before="log_batch_write")
    lines = ["epoch 1\n", "epoch 2\n", "done\n"]
    assert _on_loop(store, pg, "events.add_batch", _log(task, lines)) == {"added": 3, "errors": 0, "errors_info": {}}
    assert pg.statements == ["log_batch_write", "task_for_events", "log_batch_write"]
    with store.read() as conn:
        after = get_task(conn, task)
    assert after is not None and after["name"] == "renamed meanwhile" and after["last_update"] > before["last_update"]
    assert _stored_log(store, task) == lines

    again = Meddling(store.pg_dsn, lambda: None)
    assert _on_loop(store, again, "events.add_batch", _log(task, lines))["added"] == 3
    assert again.statements == ["log_batch_write"]  # it knew the task as it saved it
    assert _stored_log(store, task) == lines  # each line once

    mixed = Meddling(store.pg_dsn, lambda: None)  # metrics change more of the task: its transaction, in a thread
    scalar = {"type": "training_stats_scalar", "task": task, "iter": 3, "metric": "loss", "variant": "v", "value": 0.5}
    assert _on_loop(store, mixed, "events.add_batch", {"requests": [scalar]})["added"] == 1
    assert mixed.statements == []
    with store.read() as conn:
        assert (get_task(conn, task) or {})["last_iteration"] == 3


def test_a_log_batch_leaves_a_locked_task_to_a_thread_that_waits_for_it(store: Store) -> None:
    """A task row held by a transaction in progress (a psql session, a status change) is not waited for on the event
    loop, whose connections every pop and enqueue share: the batch goes to a thread, which waits for the lock."""
    task, _ = _task_and_queue(store)

    class Timed(Meddling):
        async def fetch(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            self.sent = time.monotonic()
            try:
                return await super().fetch(name, params)
            finally:
                self.answered = time.monotonic()

    with psycopg.connect(store.pg_dsn) as holder:
        holder.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (task,))
        threading.Timer(1.0, holder.rollback).start()
        pg = Timed(store.pg_dsn, lambda: None)
        began = time.monotonic()
        assert _on_loop(store, pg, "events.add_batch", _log(task, ["after the lock\n"]))["added"] == 1
    assert pg.statements == ["log_batch_write"] and pg.answered - pg.sent < 0.5  # the loop's statement did not wait
    assert time.monotonic() - began >= 0.9  # the thread did
    assert _stored_log(store, task) == ["after the lock\n"]


def test_a_log_batch_is_refused_to_a_stranger_and_taken_from_the_tasks_runner(store: Store) -> None:
    task, _ = _task_and_queue(store)
    bob = Identity(user="u-bob", user_name="bob", company="c", access_key="BOB", role="user")
    pg = Meddling(store.pg_dsn, lambda: None)
    with pytest.raises(ApiError) as refused:
        _all_on_loop(store, pg, [("events.add_batch", _log(task, ["not mine\n"]))], identities=[bob])
    assert refused.value.code == 403 and "only its owner or an admin can report events" in refused.value.msg
    assert pg.statements == ["log_batch_write", "task_for_events"]  # what it read decided: the thread says why
    assert _stored_log(store, task) == []

    with store.write() as conn:  # bob's agent pulled the task off a queue: its runner
        conn.exec_driver_sql("UPDATE tasks SET runner = 'BOB' WHERE id = %(t)s", {"t": task})
    pulled = Meddling(store.pg_dsn, lambda: None)
    assert _all_on_loop(store, pulled, [("events.add_batch", _log(task, ["training\n"]))],
                        identities=[bob])[0]["added"] == 1
    assert pulled.statements == ["log_batch_write"]
    assert _stored_log(store, task) == ["training\n"]


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


def _tasks(store: Store, count: int) -> list[str]:
    with store.write() as conn:
        made = [tasks.new_task(f"t{i}", "training", user=ADMIN.user, company="c") for i in range(count)]
        for doc in made:
            insert_task(conn, doc)
    return [doc["id"] for doc in made]


def test_concurrent_enqueues_and_pops_share_statements_in_order_and_lose_nothing(store: Store) -> None:
    """Calls that arrive together go to the database together: 30 enqueues onto two queues in one statement, then
    more pops than entries in one statement per queue. Each queue keeps the order the enqueues came in, each entry
    goes to one pop, in that order, and each popped task is delivered to its popper."""
    with store.write() as conn:
        first = queues.create(conn, "first", user=ADMIN.user, company="c", tags=[], system_tags=[])
        second = queues.create(conn, "second", user=ADMIN.user, company="c", tags=[], system_tags=[])
    made = _tasks(store, 30)
    onto = {task: (first if i % 3 else second) for i, task in enumerate(made)}
    pg = Meddling(store.pg_dsn, lambda: None)
    answers = _all_on_loop(store, pg, [("tasks.enqueue", {"task": t, "queue": onto[t]}) for t in made])
    assert [a["queued"] for a in answers] == [1] * 30
    assert pg.statements == ["enqueue_many"]
    with store.read() as conn:
        entries = entries_of(conn, [first, second])
    assert [e["task"] for e in entries[first]] == [t for t in made if onto[t] == first]
    assert [e["task"] for e in entries[second]] == [t for t in made if onto[t] == second]

    pg = Meddling(store.pg_dsn, lambda: None)
    poppers = [Identity(user="u-admin", user_name="admin", company="c", access_key=f"K{i}", role="admin")
               for i in range(25)]
    pops = _all_on_loop(store, pg, [("queues.get_next_task", {"queue": first})] * 25, poppers)
    assert pg.statements == ["pop_many"]
    expected = [e["task"] for e in entries[first]]
    assert [p.get("entry", {}).get("task") for p in pops] == expected + [None] * (25 - len(expected))
    with store.read() as conn:
        assert entries_of(conn, [first])[first] == []
        delivered = dict(conn.exec_driver_sql("SELECT task, queue FROM deliveries").all())
        runners = dict(conn.exec_driver_sql("SELECT id, runner FROM tasks WHERE runner IS NOT NULL").all())
    assert delivered == {t: first for t in expected}
    assert runners == {t: f"K{i}" for i, t in enumerate(expected)}  # each popper may report on what it got


def test_pops_together_leave_a_retry_to_the_workers_that_may_take_it(store: Store) -> None:
    """A retry's entry at the head of the queue, held back from the worker it failed on: of three pops made at once,
    that worker gets the next entry, another worker the retry, and an anonymous pop the one after."""
    with store.write() as conn:
        queue = queues.create(conn, "retrying", user=ADMIN.user, company="c", tags=[], system_tags=[])
    retry, *others = _tasks(store, 4)
    _all_on_loop(store, AsyncPg(store.pg_dsn), [("tasks.enqueue", {"task": t, "queue": queue}) for t in others])
    _on_loop(store, AsyncPg(store.pg_dsn), "tasks.enqueue", {"task": retry, "queue": queue})
    with store.write() as conn:  # as retries.after_failure puts it back: at the front, held back from w-a
        conn.exec_driver_sql("UPDATE queue_entries SET position = -1, avoid = 'w-a' WHERE task = %(t)s", {"t": retry})
    pg = Meddling(store.pg_dsn, lambda: None)

    async def pop_together() -> list[Pop | None]:
        await pg.open()
        try:
            since = time.time() - 30
            return list(await asyncio.gather(*(pg.pop(queue, PopRequest(runner="K", worker=w, since=since))
                                               for w in ("w-a", "w-b", None))))
        finally:
            await pg.close()

    popped = [p[0] if p else None for p in asyncio.run(pop_together())]
    assert popped == [others[0], retry, others[1]]
    assert pg.statements == ["pop_many"] + ["pop_and_deliver"] * 3
    with store.read() as conn:
        assert [e["task"] for e in entries_of(conn, [queue])[queue]] == [others[2]]


def test_named_workers_pops_share_their_forcing_check_and_each_keeps_its_own(store: Store) -> None:
    """Pops that name their worker check whether it, or a queue, is forced off: made at once, they share that check's
    statement, and each still obeys its own answer: a worker forced off gets nothing, nor does one pulling from a
    paused queue alone, while the others get the entries in queue order."""
    with store.write() as conn:
        open_queue = queues.create(conn, "open", user=ADMIN.user, company="c", tags=[], system_tags=[])
        paused = queues.create(conn, "paused", user=ADMIN.user, company="c", tags=["force_workers:off"],
                               system_tags=[])
        conn.exec_driver_sql("INSERT INTO runtime_properties (worker, key, value, expires) "
                             "VALUES ('w-off', 'force', 'off', NULL)")
    made = _tasks(store, 4)
    _all_on_loop(store, AsyncPg(store.pg_dsn), [("tasks.enqueue", {"task": t, "queue": open_queue}) for t in made[:3]]
                 + [("tasks.enqueue", {"task": made[3], "queue": paused})])
    pg = Meddling(store.pg_dsn, lambda: None)
    pops = _all_on_loop(store, pg, [
        ("queues.get_next_task", {"queue": open_queue, "worker": "w-1"}),
        ("queues.get_next_task", {"queue": open_queue, "worker": "w-off"}),
        ("queues.get_next_task", {"queue": paused, "worker": "w-2"}),
        ("queues.get_next_task", {"queues": [paused, open_queue], "worker": "w-3"}),
    ])
    assert [p.get("entry", {}).get("task") for p in pops] == [made[0], None, None, made[1]]
    assert pg.statements[0] == "pull_policies" and "pull_policy" not in pg.statements
    with store.read() as conn:
        assert [e["task"] for e in entries_of(conn, [paused])[paused]] == [made[3]]
        assert [e["task"] for e in entries_of(conn, [open_queue])[open_queue]] == [made[2]]


def test_a_pop_whose_caller_is_gone_puts_its_entry_back(store: Store) -> None:
    """A pop cancelled (its client went away) while its statement runs: the entry it took goes back to the front of
    the queue, and no delivery is left waiting for an answer that never went out."""
    with store.write() as conn:
        queue = queues.create(conn, "gone", user=ADMIN.user, company="c", tags=[], system_tags=[])
    made = _tasks(store, 2)
    _all_on_loop(store, AsyncPg(store.pg_dsn), [("tasks.enqueue", {"task": t, "queue": queue}) for t in made])
    held_since = time.time() - 5  # the head is a retry's entry, held back from the worker it failed on
    with store.write() as conn:
        conn.exec_driver_sql("UPDATE queue_entries SET avoid = 'box:0', added = %(a)s WHERE task = %(t)s",
                             {"a": held_since, "t": made[0]})

    class Slow(Meddling):
        """Holds the pop's statement until the test lets it go."""

        def __init__(self, dsn: str) -> None:
            super().__init__(dsn, lambda: None)
            self.sent, self.go = asyncio.Event(), asyncio.Event()

        async def fetch(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            if name == "pop_and_deliver":
                self.sent.set()
                await self.go.wait()
            return await super().fetch(name, params)

    async def cancelled_pop() -> list[str]:
        pg = Slow(store.pg_dsn)
        await pg.open()
        try:
            pop = asyncio.ensure_future(pg.pop(queue, PopRequest(runner="K", worker=None, since=0.0)))
            await asyncio.wait_for(pg.sent.wait(), 5)
            pop.cancel()
            pg.go.set()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not pg._pops:  # noqa: SLF001 - the pops of that queue are all answered
                    break
            return pg.statements
        finally:
            await pg.close()

    assert asyncio.run(cancelled_pop()) == ["pop_and_deliver", "give_back"]
    with store.read() as conn:
        assert [e["task"] for e in entries_of(conn, [queue])[queue]] == made
        assert conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar() == 0
        # back as it was: still held back from box:0, for what is left of its hold
        assert conn.exec_driver_sql("SELECT avoid, added FROM queue_entries WHERE task = %(t)s",
                                    {"t": made[0]}).one() == ("box:0", held_since)


def _rows_to_enqueue(store: Store, tasks_: list[str], queue: str) -> list[dict[str, Any]]:
    """What the enqueue hands AsyncPg.enqueue for each task: its stored document and the one to save."""
    rows = []
    for task in tasks_:
        stored = known_docs.TASKS.get(task)
        assert stored is not None
        doc = loads(stored)
        doc["status"] = "queued"
        rows.append({"id": task, "old": stored, "q": queue, "a": time.time(), **task_columns(doc)})
    return rows


def _enqueue_together(store: Store, rows: list[dict[str, Any]]) -> tuple[list[object], list[str], float]:
    pg = Meddling(store.pg_dsn, lambda: None)

    async def run() -> tuple[list[object], float]:
        await pg.open()
        try:
            began = time.monotonic()
            answers = await asyncio.gather(*(pg.enqueue(row) for row in rows), return_exceptions=True)
            return answers, time.monotonic() - began
        finally:
            await pg.close()

    answers, took = asyncio.run(run())
    return answers, pg.statements, took


def test_a_bad_row_fails_its_own_enqueue_and_not_those_it_shared_a_statement_with(store: Store) -> None:
    with store.write() as conn:
        queue = queues.create(conn, "mixed", user=ADMIN.user, company="c", tags=[], system_tags=[])
    rows = _rows_to_enqueue(store, _tasks(store, 3), queue)
    rows[1]["a"] = "not a time"  # what PostgreSQL refuses for that row alone
    answers, statements, _ = _enqueue_together(store, rows)
    assert answers[0] is True and answers[2] is True
    assert isinstance(answers[1], DataError)
    assert statements == ["enqueue_many", "enqueue_write", "enqueue_write", "enqueue_write"]
    with store.read() as conn:
        assert [e["task"] for e in entries_of(conn, [queue])[queue]] == [rows[0]["id"], rows[2]["id"]]


def test_a_task_locked_by_a_transaction_in_progress_holds_up_no_other_enqueue(store: Store, pg_url: str) -> None:
    """A task row held by a long transaction (a psql session): the enqueues sharing its statement go through at
    once, and that task's own is left to the locked path (it answers "not enqueued here")."""
    with store.write() as conn:
        queue = queues.create(conn, "locks", user=ADMIN.user, company="c", tags=[], system_tags=[])
    rows = _rows_to_enqueue(store, _tasks(store, 3), queue)
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (rows[0]["id"],))
        answers, statements, took = _enqueue_together(store, rows)
        holder.rollback()
    assert answers == [False, True, True]
    assert statements == ["enqueue_many"]
    assert took < 1.0  # not the 5 s lock timeout
    with store.read() as conn:
        assert [e["task"] for e in entries_of(conn, [queue])[queue]] == [rows[1]["id"], rows[2]["id"]]


def test_an_enqueue_of_a_task_locked_by_a_transaction_is_a_retryable_error_after_a_while(store: Store,
                                                                                        pg_url: str) -> None:
    """The event loop's statement skips the locked task, and the locked path it leaves the call to waits for the lock
    as long as the loop's statements would have (LOCK_TIMEOUT_MS), then fails as an unreachable database does (a
    503 that clients retry): no thread is held for as long as the psql session stays open."""
    task, queue = _task_and_queue(store)
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (task,))
        began = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            _enqueue(store, AsyncPg(store.pg_dsn), task, queue)
        took = time.monotonic() - began
        holder.rollback()
    assert LOCK_TIMEOUT_MS / 1000 - 0.5 < took < LOCK_TIMEOUT_MS / 1000 + 4
    assert _enqueue(store, AsyncPg(store.pg_dsn), task, queue)["queued"] == 1  # once the lock is gone


def test_a_lone_server_sends_no_notify_and_a_second_one_is_woken_all_the_same(tmp_path: Path, pg_url: str) -> None:
    """A server process that no other one listens to wakes its own long-polls without PostgreSQL's NOTIFY; once a
    second server process listens, the first one's enqueues NOTIFY again and wake the second one's long-polls."""
    first = ServerProcess(tmp_path / "first", db=pg_url).start()
    second: ServerProcess | None = None
    try:
        api = first.client()
        queue = api.call("queues.create", {"name": "lone"})["id"]
        made = [api.call("tasks.create", {"name": f"t{i}", "type": "training"})["id"] for i in range(2)]
        with psycopg.connect(pg_url, autocommit=True, application_name="a test listening") as listening:
            listening.execute("LISTEN conveyor_queues")
            listening.execute("SELECT 1")  # a session whose last statement is that LISTEN counts as a server's
            time.sleep(2 * PEERS_CHECK_SEC)  # the first server has looked for others by now
            api.call("tasks.enqueue", {"task": made[0], "queue": queue})
            heard = [n.payload for n in listening.notifies(timeout=1.0)]
            assert queue not in heard
            assert api.call("queues.get_next_task", {"queue": queue, "wait": 5})["entry"]["task"] == made[0]

            second = ServerProcess(tmp_path / "second", db=pg_url)
            second.home.mkdir(parents=True)
            second.config_file.write_text(first.config_file.read_text())
            second.start()
            waiting: dict[str, Any] = {}
            waiter = threading.Thread(target=lambda: waiting.update(second.client().call(  # type: ignore[union-attr]
                "queues.get_next_task", {"queue": queue, "wait": 20}, timeout=30)))
            waiter.start()
            time.sleep(0.5)  # parked in its long-poll
            began = time.monotonic()
            api.call("tasks.enqueue", {"task": made[1], "queue": queue})
            waiter.join(30)
            assert waiting["entry"]["task"] == made[1]
            assert time.monotonic() - began < 1.0  # woken, not found by a later look
            assert queue in [n.payload for n in listening.notifies(timeout=1.0)]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_listener_hears_of_a_newcomer_at_once_and_looks_again_after_it_began(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The HELLO of a server process that begins to listen turns the others' NOTIFYs back on before their next
    check (here a minute away), and a process's long-polls look again a while after it began to listen, for what
    an enqueue sent without a NOTIFY meanwhile."""
    monkeypatch.setattr(notify, "PEERS_CHECK_SEC", 60.0)
    async def run() -> tuple[bool, float, str, float]:
        loop = asyncio.get_running_loop()
        signals = QueueSignals()
        signals.bind(loop)
        listener = PgListener(pg_url, signals)
        listener.start()
        try:
            await asyncio.wait_for(listener.ready.wait(), 10)
            began = loop.time()
            with signals.listen(["some-queue"]) as woken:
                await asyncio.sleep(0.2)
                alone = listener.peers.quiet
                newcomer = await psycopg.AsyncConnection.connect(pg_url, autocommit=True,
                                                                 application_name=LISTENER_APP)
                async with newcomer:
                    await newcomer.execute("LISTEN conveyor_queues")
                    hello = loop.time()
                    await newcomer.execute("SELECT pg_notify('conveyor_queues', %s)", (HELLO,))
                    while listener.peers.quiet and loop.time() - hello < 5:
                        await asyncio.sleep(0.005)
                    heard_after = loop.time() - hello
                    reason = await asyncio.wait_for(woken, CATCH_UP_SEC + 2)
                    return alone, heard_after, reason, loop.time() - began
        finally:
            await listener.stop()

    alone, heard_after, reason, woken_after = asyncio.run(run())
    assert alone
    assert heard_after < 0.3
    assert reason == "" and CATCH_UP_SEC - 0.5 < woken_after < CATCH_UP_SEC + 1


def test_any_session_whose_last_statement_listens_counts_as_another_server(pg_url: str) -> None:
    """A server process of an earlier release (no application name, no HELLO) is known by its LISTEN connection's
    last statement: within a check, the lone process sends its NOTIFYs again."""
    async def run() -> tuple[bool, bool]:
        signals = QueueSignals()
        signals.bind(asyncio.get_running_loop())
        listener = PgListener(pg_url, signals)
        listener.start()
        try:
            await asyncio.wait_for(listener.ready.wait(), 10)
            await asyncio.sleep(0.3)
            alone = listener.peers.quiet
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as older:
                await older.execute("LISTEN conveyor_queues")
                await asyncio.sleep(2.5 * PEERS_CHECK_SEC)
                return alone, listener.peers.quiet
        finally:
            await listener.stop()

    assert asyncio.run(run()) == (True, False)


def _cached_plan(dsn: str, name: str, params: dict[str, Any]) -> str:
    """The plan PostgreSQL keeps for statement `name` once the pool's connection has prepared it: a generic plan,
    made with the table statistics of that moment and used from then on, however the tables grow."""
    order: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", numbered, statement(name, "postgresql"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE hot AS {text}")
        cursor = psycopg.ClientCursor(conn)
        cursor.execute(f"EXPLAIN EXECUTE hot({', '.join(['%s'] * len(order))})", [params[n] for n in order])
        return "\n".join(row[0] for row in cursor.fetchall())


def test_shared_enqueues_and_pops_find_their_tasks_by_key_whatever_the_statistics(store: Store) -> None:
    """The statements that enqueues and pops share are planned once per connection, with the statistics of a young
    database: they must look their tasks up by key, not read the whole task table (a plan that, with the tasks a
    day's work leaves, made every shared enqueue cost milliseconds of the database's time)."""
    made = _tasks(store, 1000)
    task, queue = made[0], _task_and_queue(store)[1]
    with psycopg.connect(store.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO queue_entries (queue, task, added, position) "
                     "SELECT %s, id, 0, row_number() OVER () FROM tasks WHERE id <> %s LIMIT 50", [queue, task])
        conn.execute("ANALYZE")
    with store.read() as conn:
        doc = get_task(conn, task)
    assert doc is not None
    row = {**task_columns(doc), "id": task, "old": dumps(doc), "q": queue, "a": time.time(), "n": 0}
    enqueue_plan = _cached_plan(store.pg_dsn, "enqueue_many", {"rows": dumps([row, {**row, "n": 1}])})
    pops_plan = _cached_plan(store.pg_dsn, "pop_many", {"q": queue, "k": 2, "since": 0.0, "d": time.time(),
                                                        "runner": ["K1", "K2"], "w": [None, None]})
    pop_plan = _cached_plan(store.pg_dsn, "pop_and_deliver", {"q": queue, "since": 0.0, "d": time.time(),
                                                              "runner": "K1", "w": None})
    for plan in (enqueue_plan, pops_plan, pop_plan):
        assert "Seq Scan on tasks" not in plan, plan
        assert "tasks_pkey" in plan, plan
