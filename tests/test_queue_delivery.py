"""Queue delivery guarantees: exactly-once pops under concurrency, long-poll wake-ups, durability across SIGKILL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ServerProcess

TASKS = 2000
CONSUMERS = 16
# The consumers here never start what they pop, so on a slow machine the server's sweep would rightly put a task
# popped over a minute ago back in its queue (a second delivery by design): these servers do not sweep.
NO_SWEEP = {"CONVEYOR__SERVER__UNSTARTED_REQUEUE_SEC": "0"}


def _make_tasks(client, count: int) -> list[str]:  # noqa: ANN001
    return [client.call("tasks.create", {"name": f"t{i}", "type": "training"})["id"] for i in range(count)]


def _consume(servers: list[ServerProcess], queue: str, producers_done: threading.Event) -> list[list[str]]:
    """CONSUMERS threads, each with its own client, long-polling until the producers are done and the queue is dry."""
    def consumer(index: int) -> list[str]:
        client = servers[index % len(servers)].client()
        got: list[str] = []
        while True:
            answer = client.call("queues.get_next_task", {"queue": queue, "wait": 0.5})
            if answer.get("entry"):
                got.append(answer["entry"]["task"])
            elif producers_done.is_set():
                return got

    with ThreadPoolExecutor(CONSUMERS) as pool:
        return list(pool.map(consumer, range(CONSUMERS)))


def _wake_after_enqueue(waiting: ServerProcess, producer, queue: str, task: str,  # noqa: ANN001
                        settle: float) -> tuple[dict, float]:
    """A long-poll held on `waiting`; after `settle` s the task is enqueued through `producer`. Returns the
    waiter's answer and the seconds from the enqueue to that answer."""
    answer: dict = {}
    waiter = threading.Thread(target=lambda: answer.update(
        waiting.client().call("queues.get_next_task", {"queue": queue, "wait": 20}, timeout=30)))
    waiter.start()
    time.sleep(settle)
    sent = time.monotonic()
    producer.call("tasks.enqueue", {"task": task, "queue": queue})
    waiter.join(25)
    return answer, time.monotonic() - sent


def _produce_and_consume(producer_servers: list[ServerProcess], consumer_servers: list[ServerProcess]) -> None:
    admin = producer_servers[0].client()
    queue = admin.call("queues.create", {"name": "race"})["id"]
    done = threading.Event()
    enqueued: list[str] = []

    def produce(index: int) -> None:
        client = producer_servers[index % len(producer_servers)].client()
        for task in _make_tasks(client, TASKS // 2):
            client.call("tasks.enqueue", {"task": task, "queue": queue})
            enqueued.append(task)

    producers = [threading.Thread(target=produce, args=(i,)) for i in range(2)]
    for p in producers:
        p.start()
    results: list[list[str]] = []
    consumer_thread = threading.Thread(target=lambda: results.extend(_consume(consumer_servers, queue, done)))
    consumer_thread.start()
    for p in producers:
        p.join()
    done.set()
    consumer_thread.join(300)
    delivered = [task for batch in results for task in batch]
    assert len(enqueued) == TASKS
    assert len(delivered) == len(set(delivered)), "a task was delivered twice"
    assert sorted(delivered) == sorted(enqueued), "a task was lost"
    assert sum(1 for batch in results if batch) > 1, "only one consumer ever got work: no concurrency was tested"
    assert admin.call("queues.get_by_id", {"queue": queue})["queue"]["entries"] == []


def test_concurrent_consumers_get_every_task_exactly_once(tmp_path: Path, db_url: str | None) -> None:
    server = ServerProcess(tmp_path / "home", db=db_url, extra_env=NO_SWEEP).start()
    try:
        _produce_and_consume([server], [server])
    finally:
        server.stop()


def test_two_server_processes_on_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    first = ServerProcess(tmp_path / "a", db=pg_url, extra_env=NO_SWEEP).start()
    # The second server shares the database, so it shares the credentials the first one created.
    second = ServerProcess(tmp_path / "b", db=pg_url, extra_env=NO_SWEEP)
    second.home.mkdir(parents=True)
    second.config_file.write_text(first.config_file.read_text())
    second.start()
    try:
        assert "First start" not in second.output()
        _produce_and_consume([first], [first, second])

        # A long-poll held by one process wakes when the task is enqueued through the other (LISTEN/NOTIFY).
        admin = first.client()
        queue = admin.call("queues.create", {"name": "cross"})["id"]
        task = _make_tasks(admin, 1)[0]
        answer, took = _wake_after_enqueue(second, admin, queue, task, settle=1.0)
        assert answer.get("entry", {}).get("task") == task
        assert took < 1.0, "the wake-up came from the poll timeout, not from NOTIFY"
    finally:
        second.stop()
        first.stop()


def test_long_poll_waits_and_wakes(sqlite_server: ServerProcess) -> None:
    client = sqlite_server.client()
    queue = client.call("queues.create", {"name": "lp"})["id"]
    start = time.monotonic()
    assert client.call("queues.get_next_task", {"queue": queue, "wait": 1.0}) == {}
    assert 0.9 <= time.monotonic() - start < 3.0

    task = _make_tasks(client, 1)[0]
    answer, took = _wake_after_enqueue(sqlite_server, client, queue, task, settle=0.5)
    assert answer["entry"]["task"] == task
    assert took < 0.5
    # Without `wait` the call behaves exactly as ClearML's: an empty queue answers at once.
    start = time.monotonic()
    assert client.call("queues.get_next_task", {"queue": queue}) == {}
    assert time.monotonic() - start < 0.5


def test_a_pending_long_poll_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """A server with a waiting long-poll once took 30 s to stop (and `conveyor up` then killed it): the waiter now
    answers "nothing" at once and the server exits."""
    server = ServerProcess(tmp_path / "home").start()
    client = server.client()
    queue = client.call("queues.create", {"name": "lp-stop"})["id"]
    answers: list[object] = []

    def wait() -> None:
        try:
            answers.append(client.call("queues.get_next_task", {"queue": queue, "wait": 25.0}, timeout=40))
        except Exception as exc:  # noqa: BLE001 - a closed connection is an acceptable answer too
            answers.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    waiter.join(10)
    assert took < 3, f"the server took {took:.1f} s to stop"
    assert answers and answers[0] == {}, answers


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_loses_no_acknowledged_enqueue(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    db = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    server = ServerProcess(tmp_path / "home", db=db).start()
    client = server.client(max_retries=0)
    queue = client.call("queues.create", {"name": "durable"})["id"]
    tasks = _make_tasks(client, 400)
    acknowledged: list[str] = []

    def enqueue_until_killed() -> None:
        for task in tasks:
            try:
                client.call("tasks.enqueue", {"task": task, "queue": queue})
            except Exception:
                return
            acknowledged.append(task)

    writer = threading.Thread(target=enqueue_until_killed)
    writer.start()
    while len(acknowledged) < 100:
        time.sleep(0.005)
    server.kill()
    writer.join(30)
    assert 100 <= len(acknowledged) < len(tasks), "the kill did not land in the middle of the enqueues"

    server.start()
    after = server.client()
    entries = [e["task"] for e in after.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]]
    assert entries[: len(acknowledged)] == acknowledged
    found = after.call("tasks.get_all", {"id": acknowledged, "only_fields": ["status"]})["tasks"]
    statuses = {t["id"]: t["status"] for t in found}
    assert set(statuses.values()) == {"queued"}
    server.stop()


def test_long_polls_that_give_up_lose_no_task(tmp_path: Path, db_url: str | None) -> None:
    """Consumers long-poll with a client timeout far below `wait` and reconnect, as an impatient agent or a flaky
    network does. An answer written as its client gives up is lost on the way: the task must come back (at once
    when the server sees the disconnect, else once it was not started in time), and be started exactly once."""
    import httpx

    count, consumers = 600, 16
    server = ServerProcess(tmp_path / "home", db=db_url,
                           extra_env={"CONVEYOR__SERVER__UNSTARTED_REQUEUE_SEC": "3"}).start()
    admin = server.client()
    queue = admin.call("queues.create", {"name": "impatient"})["id"]
    tasks = _make_tasks(admin, count)
    started: list[str] = []
    lock = threading.Lock()
    finished = threading.Event()

    def consume() -> None:
        key, secret = server.credentials()
        jwt = httpx.get(f"{server.url}/auth.login", auth=(key, secret), timeout=10).json()["data"]["token"]
        headers = {"Authorization": f"Bearer {jwt}"}
        with httpx.Client(timeout=30, headers=headers) as agent:
            while not finished.is_set():
                # A fresh connection per poll, closed when the client gives up after 0.3 s.
                with httpx.Client(timeout=httpx.Timeout(0.3, connect=5), headers=headers) as poll:
                    try:
                        response = poll.post(f"{server.url}/queues.get_next_task", json={"queue": queue, "wait": 5})
                    except httpx.TimeoutException:
                        continue
                entry = response.json()["data"].get("entry")
                if entry:  # as an agent does: started at once (which tells the server the task arrived)
                    agent.post(f"{server.url}/tasks.started", json={"task": entry["task"], "force": True})
                    with lock:
                        started.append(entry["task"])
                        if len(started) >= count:
                            finished.set()

    threads = [threading.Thread(target=consume) for _ in range(consumers)]
    try:
        for t in threads:
            t.start()
        producer = server.client()
        for i, task in enumerate(tasks):
            producer.call("tasks.enqueue", {"task": task, "queue": queue})
            if i % 4 == 3:
                time.sleep(0.02)  # a trickle: most consumers are waiting, and giving up, when an entry arrives
        finished.wait(30)
        finished.set()
        for t in threads:
            t.join(10)
        assert len(started) == len(set(started)), "a task was delivered twice"
        assert sorted(started) == sorted(tasks), f"{count - len(started)} task(s) lost: popped, never delivered"
        left = admin.call("tasks.get_all", {"id": tasks, "status": ["queued"], "only_fields": ["id"]})["tasks"]
        assert left == []
    finally:
        finished.set()
        server.stop()
