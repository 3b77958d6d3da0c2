"""The server's domain layer (server/model) on an in-process SQLite database migrated as the server migrates it:
the status machine, queues and the default queue, deliveries (pop, give back, requeue) and reaping lost workers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from conveyor.protocol.errors import ApiError
from conveyor.protocol.status import STOPPING, TaskStatus
from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED
from conveyor.server.codec import Document
from conveyor.server.model import deliveries, events, forcing, projects, queues, tasks, users, workers
from conveyor.server.store import Store
from conveyor.server.store import schema as s
from conveyor.server.store.database import sqlite_url
from conveyor.server.store.documents import entries_of, get_task, insert_task, save_task

S = TaskStatus


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database file per module; each test works on a copy (migrating costs more than the tests)."""
    folder = tmp_path_factory.mktemp("template")
    store = Store(sqlite_url(folder))
    store.migrate()
    store.dispose()
    return folder / "conveyor.db"


@pytest.fixture
def store(migrated: Path, tmp_path: Path) -> Iterator[Store]:
    shutil.copy(migrated, tmp_path / "conveyor.db")
    opened = Store(sqlite_url(tmp_path))
    yield opened
    opened.dispose()


@pytest.fixture
def conn(store: Store) -> Iterator[Connection]:
    with store.write() as connection:
        yield connection


def make_task(conn: Connection, name: str = "t", user: str = "u1") -> Document:
    doc = tasks.new_task(name, "training", user=user, company="c")
    insert_task(conn, doc)
    return doc


def make_queue(conn: Connection, name: str) -> str:
    return queues.create(conn, name, user="u1", company="c", tags=[], system_tags=[])


def queued_tasks(conn: Connection, queue_id: str) -> list[str]:
    return [e["task"] for e in entries_of(conn, [queue_id])[queue_id]]


def stored(conn: Connection, task_id: str) -> Document:
    doc = get_task(conn, task_id)
    assert doc is not None
    return doc


def enqueued(conn: Connection, queue_id: str, name: str = "t") -> Document:
    doc = make_task(conn, name)
    tasks.enqueue(conn, doc, queue_id, user="u1", force=False, reason="", message="")
    return doc


def report(conn: Connection, worker: str, task_id: str | None, *, timeout: int = 60, claims: bool = True) -> None:
    """A worker's status report naming the task it runs (`claims`: the worker may report on that task)."""
    doc = workers.touch(conn, worker, user="u1", ip="", timeout=timeout, default_timeout=60, register=False)
    task = get_task(conn, task_id, lock=True) if task_id and claims else None
    workers.report(conn, worker, doc, task_id=task_id, queue_id=None, stats={"cpu_usage": [1.0], "secret": 1},
                   is_daemon=True, task=task)


# --- the status machine ---------------------------------------------------------------------------------------------
def test_a_started_task_records_when_it_started(conn: Connection) -> None:
    doc = make_task(conn)
    fields = tasks.set_status(conn, doc, S.in_progress, force=False, user="u1")
    assert fields["status"] == "in_progress" and fields["started"]
    assert stored(conn, doc["id"])["status"] == "in_progress"


def test_a_refused_change_names_both_statuses_and_leaves_the_task_as_it_was(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    tasks.set_status(conn, doc, S.completed, force=False)
    tasks.set_status(conn, doc, S.published, force=False)
    with pytest.raises(ApiError) as refused:
        tasks.set_status(conn, stored(conn, doc["id"]), S.in_progress, force=False)
    assert refused.value.subcode == 110
    assert "from published to in_progress" in refused.value.msg and "force=true" in refused.value.msg
    assert stored(conn, doc["id"])["status"] == "published"
    tasks.set_status(conn, stored(conn, doc["id"]), S.in_progress, force=True)  # force skips the machine
    assert stored(conn, doc["id"])["status"] == "in_progress"


@pytest.mark.parametrize("final", [S.completed, S.failed, S.stopped])
def test_a_final_status_records_when_the_run_ended_and_how_long_it_ran(conn: Connection, final: S) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    fields = tasks.set_status(conn, doc, final, force=False, reason="done", message="msg")
    saved = stored(conn, doc["id"])
    assert saved["status"] == final.value and fields["completed"] == saved["completed"]
    assert saved["status_reason"] == "done" and saved["status_message"] == "msg"
    assert saved["active_duration"] >= 0


def test_a_task_aborted_while_queued_leaves_its_queue_and_says_why(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    doc = enqueued(conn, queue_id)
    assert queued_tasks(conn, queue_id) == [doc["id"]]
    fields = tasks.stop(conn, doc, user="u1", force=False, reason=None, message=None)
    assert fields["status"] == "stopped" and fields["status_reason"] == "stopped by user"
    assert queued_tasks(conn, queue_id) == []
    assert deliveries.pop(conn, [queue_id], runner=None) is None


def test_a_task_a_live_worker_runs_is_asked_to_stop_rather_than_stopped(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    report(conn, "w1", doc["id"])
    fields = tasks.stop(conn, stored(conn, doc["id"]), user="u2", force=False, reason="enough", message=None)
    assert fields == {"status_message": STOPPING, "status_reason": "enough"}
    saved = stored(conn, doc["id"])
    assert saved["status"] == "in_progress" and saved["status_message"] == STOPPING


def test_a_running_task_whose_worker_is_gone_is_stopped_at_once(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    doc["last_worker"] = "nobody"
    fields = tasks.stop(conn, doc, user="u1", force=False, reason=None, message=None)
    assert fields["status"] == "stopped"


def test_a_finished_task_cannot_be_stopped_without_force(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.completed, force=True)
    with pytest.raises(ApiError, match="only queued or running tasks can be stopped"):
        tasks.stop(conn, doc, user="u1", force=False, reason=None, message=None)


def test_enqueue_refuses_a_queued_or_running_task(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    doc = enqueued(conn, queue_id)
    with pytest.raises(ApiError, match="already queued"):
        tasks.enqueue(conn, doc, queue_id, user="u1", force=True, reason="", message="")
    running = make_task(conn, "r")
    tasks.set_status(conn, running, S.in_progress, force=False)
    with pytest.raises(ApiError, match="only a task that is not running can be enqueued"):
        tasks.enqueue(conn, running, queue_id, user="u1", force=False, reason="", message="")
    assert queued_tasks(conn, queue_id) == [doc["id"]]


def test_dequeue_takes_a_task_back_to_where_it_was_before_the_enqueue(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.failed, force=True)
    tasks.enqueue(conn, doc, queue_id, user="u1", force=False, reason="", message="")
    removed, fields = tasks.dequeue(conn, doc, user="u1", new_status=None, reason="", message="")
    assert removed == 1 and fields is not None and fields["status"] == "failed"
    assert queued_tasks(conn, queue_id) == []
    assert tasks.dequeue(conn, doc, user="u1", new_status=None, reason="", message="") == (0, None)


def test_reset_forgets_the_run(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    conn.execute(s.events.insert().values(task=doc["id"], type="log", timestamp=1, msg="hello"))
    tasks.set_status(conn, doc, S.failed, force=False)
    _, fields = tasks.reset(conn, doc, user="u1", force=False, clear_all=False, reason="")
    saved = stored(conn, doc["id"])
    assert fields["status"] == "created" and "started" not in saved and "completed" not in saved
    assert conn.execute(select(s.events.c.seq).where(s.events.c.task == doc["id"])).first() is None


# --- queues ---------------------------------------------------------------------------------------------------------
def test_a_queue_is_found_by_id_or_by_its_name_in_any_case(conn: Connection) -> None:
    queue_id = make_queue(conn, "GPU")
    assert queues.resolve_queue(conn, queue_id) == queue_id
    assert queues.resolve_queue(conn, "gpu") == queue_id
    with pytest.raises(ApiError) as unknown:
        queues.resolve_queue(conn, "cpu")
    assert unknown.value.subcode == 701


def test_queue_names_are_unique_regardless_of_case(conn: Connection) -> None:
    make_queue(conn, "gpu")
    with pytest.raises(ApiError) as taken:
        make_queue(conn, "GPU")
    assert taken.value.subcode == 704


def test_the_default_queue_is_made_once_and_found_afterwards(conn: Connection) -> None:
    with pytest.raises(ApiError) as none_yet:
        queues.default_queue_id(conn)
    assert none_yet.value.subcode == 705
    made = queues.ensure_default_queue(conn, "u1")
    assert queues.ensure_default_queue(conn, "u1") == made == queues.default_queue_id(conn)
    assert queues.load(conn, made)["name"] == "default"


def test_a_queue_named_default_becomes_the_default_queue(conn: Connection) -> None:
    existing = make_queue(conn, "Default")
    assert queues.ensure_default_queue(conn) == existing
    assert "default" in queues.load(conn, existing)["system_tags"]


def test_clearing_a_queue_returns_its_tasks_to_their_status_before(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    first, second = enqueued(conn, queue_id, "a"), enqueued(conn, queue_id, "b")
    assert queues.clear(conn, queue_id, user="u1") == [first["id"], second["id"]]
    assert [stored(conn, t["id"])["status"] for t in (first, second)] == ["created", "created"]
    assert stored(conn, first["id"])["status_reason"] == "dequeued"


def test_a_queue_that_holds_tasks_is_deleted_only_with_force(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    doc = enqueued(conn, queue_id)
    with pytest.raises(ApiError) as refused:
        queues.delete_queue(conn, queue_id, user="u1", force=False)
    assert refused.value.subcode == 702
    queues.delete_queue(conn, queue_id, user="u1", force=True)
    assert stored(conn, doc["id"])["status"] == "created"
    with pytest.raises(ApiError):
        queues.load(conn, queue_id)


def test_moving_an_entry_reorders_the_queue(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    a, b, c = (enqueued(conn, queue_id, n)["id"] for n in "abc")
    assert queues.move(conn, queue_id, c, "front") == 0
    assert queued_tasks(conn, queue_id) == [c, a, b]
    assert queues.move(conn, queue_id, c, "backward", 1) == 1
    assert queued_tasks(conn, queue_id) == [a, c, b]
    with pytest.raises(ApiError, match="is not in queue"):
        queues.move(conn, queue_id, "missing", "back")


# --- deliveries -----------------------------------------------------------------------------------------------------
def test_a_pop_takes_the_oldest_entry_of_the_first_queue_that_has_one(conn: Connection) -> None:
    high, low = make_queue(conn, "high"), make_queue(conn, "low")
    first, second = enqueued(conn, low, "a"), enqueued(conn, low, "b")
    assert deliveries.pop(conn, [high], runner="key") is None
    popped = deliveries.pop(conn, [high, low], runner="key")
    assert popped is not None and (popped.task, popped.queue) == (first["id"], low)
    assert queued_tasks(conn, low) == [second["id"]]
    assert stored(conn, first["id"])["status"] == "queued"  # until its runner starts it


def test_a_pop_whose_answer_was_lost_goes_back_to_the_front(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    first, second = enqueued(conn, queue_id, "a"), enqueued(conn, queue_id, "b")
    popped = deliveries.pop(conn, [queue_id], runner=None)
    assert popped is not None
    deliveries.give_back(conn, popped)
    assert queued_tasks(conn, queue_id) == [first["id"], second["id"]]


def test_a_popped_task_never_started_is_put_back_at_the_front(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    first, second = enqueued(conn, queue_id, "a"), enqueued(conn, queue_id, "b")
    assert deliveries.pop(conn, [queue_id], runner=None) is not None
    assert deliveries.stale(conn, time.time() - 60) == []  # not yet overdue
    [(task_id, delivered)] = deliveries.stale(conn, time.time() + 1)
    assert task_id == first["id"]
    assert deliveries.requeue(conn, task_id, delivered) == queue_id
    assert queued_tasks(conn, queue_id) == [first["id"], second["id"]]
    assert deliveries.requeue(conn, task_id, delivered) is None  # claimed once: a second sweep does nothing


def test_a_started_task_is_not_put_back(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    doc = enqueued(conn, queue_id)
    assert deliveries.pop(conn, [queue_id], runner=None) is not None
    tasks.set_status(conn, stored(conn, doc["id"]), S.in_progress, force=False)  # acknowledges the delivery
    assert deliveries.stale(conn, time.time() + 1) == []
    assert queued_tasks(conn, queue_id) == []


def test_a_popped_task_whose_queue_is_gone_returns_to_created(conn: Connection) -> None:
    queue_id = make_queue(conn, "q")
    doc = enqueued(conn, queue_id)
    assert deliveries.pop(conn, [queue_id], runner=None) is not None
    queues.delete_queue(conn, queue_id, user="u1", force=False)  # empty now: no force needed
    [(task_id, delivered)] = deliveries.stale(conn, time.time() + 1)
    assert deliveries.requeue(conn, task_id, delivered) is None
    assert stored(conn, doc["id"])["status"] == "created"


# --- workers --------------------------------------------------------------------------------------------------------
def test_a_worker_that_stopped_reporting_is_forgotten_and_its_task_fails(conn: Connection) -> None:
    mine, other = make_task(conn, "mine"), make_task(conn, "other")
    for doc in (mine, other):
        tasks.set_status(conn, doc, S.in_progress, force=False)
    report(conn, "lost", mine["id"], timeout=5)
    report(conn, "alive", other["id"], timeout=3600)
    assert [w.id for w in workers.alive(conn)] == ["alive", "lost"]
    assert workers.reap(conn, time.time() + 60) == [mine["id"]]
    failed = stored(conn, mine["id"])
    assert failed["status"] == "failed" and failed["status_reason"] == "worker lost"
    assert "lost" in failed["status_message"]
    assert stored(conn, other["id"])["status"] == "in_progress"
    assert [w.id for w in workers.alive(conn)] == ["alive"]


def test_reaping_leaves_a_task_that_another_worker_took_over(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    report(conn, "old", doc["id"], timeout=5)
    report(conn, "new", doc["id"], timeout=3600)  # the task's last_worker is now "new"
    assert workers.reap(conn, time.time() + 60) == []
    assert stored(conn, doc["id"])["status"] == "in_progress"


def test_a_report_on_a_task_the_worker_may_not_change_does_not_make_it_the_tasks_worker(conn: Connection) -> None:
    doc = make_task(conn)
    tasks.set_status(conn, doc, S.in_progress, force=False)
    report(conn, "mine", doc["id"])
    report(conn, "intruder", doc["id"], claims=False)
    assert stored(conn, doc["id"])["last_worker"] == "mine"
    [intruder] = [w for w in workers.alive(conn) if w.id == "intruder"]
    assert intruder.task == doc["id"]  # what it says it runs is still recorded, for workers.get_all


def test_only_known_machine_stats_are_kept(conn: Connection) -> None:
    report(conn, "w", None)
    [row] = conn.execute(select(s.worker_stats.c.stats)).all()
    assert row.stats == '{"cpu_usage":[1.0]}'


# --- projects -------------------------------------------------------------------------------------------------------
def new_project(name: str) -> Document:
    return projects.new_project(projects.check_name(name), user="u1", company="c", description="", tags=[],
                                system_tags=[], default_output_destination=None)


def test_project_names_are_paths_unique_regardless_of_case(conn: Connection) -> None:
    project_id = projects.create(conn, new_project("team/vision"))
    assert projects.load(conn, project_id)["basename"] == "vision"
    with pytest.raises(ApiError) as taken:
        projects.create(conn, new_project("Team/Vision"))
    assert taken.value.subcode == 402
    for bad in ("", "a//b", "a/"):
        with pytest.raises(ApiError, match="Invalid project name"):
            new_project(bad)


def test_renaming_a_project_updates_its_basename_and_refuses_a_taken_name(conn: Connection) -> None:
    first = projects.create(conn, new_project("a"))
    projects.create(conn, new_project("b"))
    with pytest.raises(ApiError):
        projects.update_project(conn, projects.load(conn, first), {"name": "b"})
    changed = projects.update_project(conn, projects.load(conn, first), {"name": "x/y", "description": "d"})
    assert changed == {"name": "x/y", "basename": "y", "description": "d"}
    assert projects.load(conn, first)["basename"] == "y"


def test_a_project_with_tasks_is_deleted_only_with_force_and_its_tasks_stay(conn: Connection) -> None:
    project_id = projects.create(conn, new_project("p"))
    doc = tasks.new_task("t", "training", user="u1", company="c")
    doc["project"] = project_id
    tasks.create(conn, doc)
    with pytest.raises(ApiError, match="still has 1 task"):
        projects.delete_project(conn, project_id, force=False)
    assert projects.delete_project(conn, project_id, force=True) == 1
    assert conn.execute(select(s.tasks.c.project).where(s.tasks.c.id == doc["id"])).scalar() is None
    with pytest.raises(ApiError) as gone:
        tasks.create(conn, tasks.new_task("u", "training", user="u1", company="c") | {"project": project_id})
    assert gone.value.subcode == 401


def test_project_stats_count_tasks_by_status_leaving_archived_ones_out(conn: Connection) -> None:
    project_id = projects.create(conn, new_project("p"))
    for status, system_tags in [(S.created, []), (S.created, ["archived"]), (S.failed, ["archived"]),
                                (S.completed, ["pipeline", "archived"]), (S.completed, [])]:
        tasks.create(conn, tasks.new_task("t", "training", user="u1", company="c") | {
            "project": project_id, "status": status.value, "system_tags": system_tags})
    assert projects.status_counts(conn, [project_id]) == {project_id: {"created": 1, "completed": 1}}
    archived_only = projects.create(conn, new_project("q"))
    tasks.create(conn, tasks.new_task("t", "training", user="u1", company="c") | {
        "project": archived_only, "system_tags": ["archived"]})
    assert projects.status_counts(conn, [archived_only]) == {}


def test_project_counts_survive_a_task_changing_between_their_two_counts(conn: Connection) -> None:
    """On PostgreSQL the counts of all tasks and of the archived ones read two snapshots: a task archived as it
    completes in between (counted `in_progress`, then archived `completed`) once made a KeyError, a 500."""
    project_id = projects.create(conn, new_project("racing"))
    doc = tasks.new_task("t", "training", user="u1", company="c") | {"project": project_id,
                                                                      "status": S.in_progress.value}
    tasks.create(conn, doc)

    class Between:  # the second count sees the task completed and archived
        def __init__(self) -> None:
            self.calls = 0

        def execute(self, query: object) -> object:
            self.calls += 1
            if self.calls == 2:
                changed = stored(conn, doc["id"]) | {"status": S.completed.value, "system_tags": ["archived"]}
                save_task(conn, changed)
            return conn.execute(query)  # type: ignore[call-overload]

    assert projects.status_counts(Between(), [project_id]) == {project_id: {"in_progress": 1}}  # type: ignore[arg-type]


def test_a_retried_log_batch_is_stored_once_in_one_statement(conn: Connection) -> None:
    doc = make_task(conn)
    batch = [events.event_row({"task": doc["id"], "msg": f"line {n}\n", "conveyor_id": f"s-{n}"})
             for n in range(1200)]  # more than one statement's worth
    events.add(conn, doc, batch[:700])
    events.add(conn, stored(conn, doc["id"]), batch + [batch[0]])
    page, total, _ = events.page(conn, doc["id"], events.LOG, desc=False, limit=2000, from_timestamp=None,
                                 after_seq=None)
    assert total == 1200 and [e["msg"] for e in page] == [f"line {n}\n" for n in range(1200)]


# --- events ---------------------------------------------------------------------------------------------------------
def scalar(task_id: str, value: float, it: int, client_id: str | None = None) -> dict[str, object]:
    return events.event_row({"task": task_id, "type": events.SCALAR, "metric": "loss", "variant": "train",
                             "value": value, "iter": it, "conveyor_id": client_id})


def test_a_retried_batch_is_stored_once(conn: Connection) -> None:
    doc = make_task(conn)
    batch = [scalar(doc["id"], 1.0, 1, "a"), scalar(doc["id"], 0.5, 2, "b")]
    events.add(conn, doc, list(batch))
    events.add(conn, stored(conn, doc["id"]), list(batch))
    page, total, _ = events.page(conn, doc["id"], events.SCALAR, desc=False, limit=10, from_timestamp=None,
                                 after_seq=None)
    assert total == 2 and [e["value"] for e in page] == [1.0, 0.5]


def test_scalars_keep_the_tasks_last_metrics_and_iteration(conn: Connection) -> None:
    doc = make_task(conn)
    events.add(conn, doc, [scalar(doc["id"], 3.0, 1), scalar(doc["id"], 1.0, 5), scalar(doc["id"], 2.0, 7)])
    saved = stored(conn, doc["id"])
    assert saved["last_iteration"] == 7
    [[entry]] = [list(variants.values()) for variants in saved["last_metrics"].values()]
    assert (entry["value"], entry["min_value"], entry["min_value_iteration"], entry["max_value"]) == (2.0, 1.0, 5, 3.0)


def test_a_log_line_with_a_nul_is_kept_with_the_nul_escaped(conn: Connection) -> None:
    doc = make_task(conn)
    events.add(conn, doc, [events.event_row({"task": doc["id"], "type": "log", "msg": "a\x00b", "level": "LOUD"})])
    [line], _, _ = events.page(conn, doc["id"], events.LOG, desc=True, limit=10, from_timestamp=None, after_seq=None)
    assert line["msg"] == "a\\x00b" and line["level"] == "info"


@pytest.mark.parametrize(("event", "says"), [
    ([], "JSON object"), ({"type": "log"}, "missing 'task'"),
    ({"task": "t", "type": events.SCALAR, "value": "x"}, "numeric 'value'"),
    ({"task": "t", "timestamp": -1}, "epoch milliseconds"),
])
def test_an_invalid_event_is_refused_with_a_reason(event: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        events.event_row(event)


# --- users ----------------------------------------------------------------------------------------------------------
def test_the_first_user_is_an_admin_made_once(conn: Connection) -> None:
    first = users.ensure_user(conn)
    assert users.ensure_user(conn) == first
    row = users.find_user(conn, "conveyor admin")  # by name, in any case
    assert row is not None and row.id == first and row.role == "admin"


def test_user_names_are_unique_regardless_of_case_and_roles_are_known(conn: Connection) -> None:
    alice = users.create_user(conn, "Alice", "user")
    with pytest.raises(ApiError, match="already exists"):
        users.create_user(conn, "alice", "user")
    with pytest.raises(ApiError, match="Invalid role"):
        users.create_user(conn, "bob", "root")
    assert users.user_name(conn, alice) == "Alice"
    assert users.user_name(conn, "gone") == "an unknown user (gone)"


# --- forcing: what a long-poll naming its worker may hand out ---------------------------------------------------------
def test_a_long_poll_skips_queues_its_worker_is_forced_off(conn: Connection) -> None:
    a, b = make_queue(conn, "a"), make_queue(conn, "b")
    assert forcing.closed_queues(conn, "w", [a, b]) == set()
    queues.update_queue(conn, queues.load(conn, a), name=None, tags=[QUEUE_PAUSED], system_tags=None, metadata=None)
    assert forcing.closed_queues(conn, "w", [a, b]) == {a}  # a queue tag off: for every worker
    conn.execute(s.runtime_properties.insert().values(worker="w", key="force", value="off", expires=None))
    assert forcing.closed_queues(conn, "w", [a, b]) == {a, b}  # forced off by its runtime property
    assert forcing.closed_queues(conn, "other", [a, b]) == {a}
    queues.update_queue(conn, queues.load(conn, b), name=None, tags=[QUEUE_FORCED_ON], system_tags=None,
                        metadata=None)
    assert forcing.closed_queues(conn, "w", [a, b]) == {a}  # a queue tag on beats the runtime property
    conn.execute(s.runtime_properties.update().values(expires=time.time() - 1))
    assert not forcing.worker_forced_off(conn, "w")  # expired


class _RowCounter:
    """A connection that counts the event rows with their document (a plot's figure, an image's event) it reads."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.with_doc = 0

    def execute(self, *args: object, **kwargs: object) -> object:
        rows = self.conn.execute(*args, **kwargs).all()  # type: ignore[arg-type]
        self.with_doc += sum(1 for r in rows if "doc" in r._fields)
        return _Rows(rows)


class _Rows(list):  # type: ignore[type-arg]
    def all(self) -> list:  # type: ignore[type-arg]
        return list(self)


def test_the_latest_iterations_of_plots_read_only_those_iterations(conn: Connection) -> None:
    """A run that reports a figure every epoch holds thousands of big events: asking for the latest few iterations
    (the UI does, every few seconds while the task runs) reads the events of those iterations, not all of them."""
    doc = make_task(conn)
    rows = [events.event_row({"task": doc["id"], "type": events.PLOT, "metric": m, "variant": "v", "iter": i,
                              "timestamp": 1000 + i, "plot_str": "{}"}) for i in range(200) for m in ("a", "b")]
    events.add(conn, doc, rows)
    counted = _RowCounter(conn)
    found = events.by_iterations(counted, [doc["id"]], events.PLOT, [], 3)  # type: ignore[arg-type]
    assert sorted({e["iter"] for e in found}) == [197, 198, 199] and len(found) == 6
    assert counted.with_doc == 6
    counted = _RowCounter(conn)
    first = events.by_iterations(counted, [doc["id"]], events.PLOT, [("a", [])], 2, earlier=False,  # type: ignore[arg-type]
                                 past={doc["id"]: 0}, per_metric=True)
    assert [(e["metric"], e["iter"]) for e in first] == [("a", 1), ("a", 2)] and counted.with_doc == 2
    everything = events.by_iterations(conn, [doc["id"]], events.PLOT, [], None)
    assert len(everything) == 400
