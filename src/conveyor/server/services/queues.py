"""The `queues` service: queue documents, their ordered entries, and the atomic (optionally long-polled) pop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors, failure
from conveyor.protocol.status import TaskStatus
from conveyor.server import query as q
from conveyor.server.call import Call
from conveyor.server.codec import Document, iso, loads, now
from conveyor.server.model import deliveries, forcing, queue_limits, queue_metrics, queues, tasks
from conveyor.server.ownership import require_admin, require_task_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s
from conveyor.server.store.documents import add_entry, entries_of, get_queue, get_task
from conveyor.server.threads import in_thread
from conveyor.server.traffic import long_poll_waiting

if TYPE_CHECKING:
    from conveyor.server.store.async_pg import AsyncPg

LISTING = q.Listing(s.queues, default_order=("name",), tag_columns=("tags", "system_tags"),
                    order={"id": "id", "name": "name", "created": "created", "last_update": "last_update"})


def _queue_and_task(call: Call, conn: Connection, queue_id: str, task_id: str, doing: str, *,
                    as_runner: bool = False) -> Document | None:
    """Check that the queue exists and that the caller may change the task, if it exists; returns the task."""
    queues.load(conn, queue_id)
    doc = get_task(conn, task_id)
    if doc is not None:
        require_task_owner(call, conn, doc, doing, as_runner=as_runner)
    return doc


LATEST_DATE = 1e11  # epoch seconds beyond this (the year 5138) are no dates


@endpoint("queues.create")
def create(call: Call) -> dict[str, Any]:
    name = call.str("name", required=True)
    with call.store.write() as conn:
        return {"id": queues.create(conn, name, user=call.user, company=call.identity.company if call.identity else "",
                                    tags=call.str_list("tags") or [], system_tags=call.str_list("system_tags") or [],
                                    display_name=call.str("display_name"),
                                    max_entries=call.int("max_entries", minimum=0, maximum=2**31 - 1))}


def _limit_entries(call: Call, docs: list[Document]) -> None:
    """`max_task_entries`: only the first entries of each queue (the UI's queue list needs no more)."""
    limit = call.int("max_task_entries", minimum=0)
    if limit is not None:
        for doc in docs:
            doc["entries"] = doc.get("entries", [])[:limit]


@endpoint("queues.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        docs = queues.with_entries(conn, [queues.load(conn, call.str("queue", required=True))])
    _limit_entries(call, docs)
    return {"queue": docs[0]}


@endpoint("queues.get_all", aliases=("queues.get_all_ex",), offload=True)
def get_all(call: Call) -> dict[str, Any]:
    query, extra = q.listing(call, select(s.queues.c.doc), LISTING)
    only = call.str_list("only_fields")
    with call.store.read_apart() as conn:
        docs = [loads(r[0]) for r in q.fetch(call, conn, query)]
        if not only or any(f.split(".")[0] == "entries" for f in only):
            queues.with_entries(conn, docs)
            _limit_entries(call, docs)
    return {"queues": [q.project(d, only) for d in docs], **extra}


@endpoint("queues.get_queue_metrics", offload=True)
def get_queue_metrics(call: Call) -> dict[str, Any]:
    """Per queue and interval, the longest average wait (seconds) sampled and the queue's length then; `refresh`
    takes a sample now first. Naming no queue answers one series, `all`, averaged over the queues."""
    to_date = call.float("to_date") or now()
    from_date = call.float("from_date")
    from_date = to_date - 3600 if from_date is None else from_date
    interval = call.float("interval") or 60
    if interval < 1 or not 0 <= from_date <= to_date <= LATEST_DATE:
        raise errors.validation_error("Validation error: 'interval' must be at least 1 (seconds), 'from_date' and "
                                      "'to_date' epoch seconds, and 'from_date' not after 'to_date'")
    queue_ids = call.str_list("queue_ids") or []
    if call.bool("refresh"):
        with call.store.write() as conn:
            queue_metrics.sample(conn, now(), call.state.settings.queue_metrics_sample_sec, replace=True)
    with call.store.read() as conn:
        found = queues.existing(conn, queue_ids) if queue_ids else set()
        for qid in queue_ids:
            if qid not in found:
                raise errors.invalid_queue_id(qid)
        listed = queue_metrics.series(conn, from_date, to_date, interval, queue_ids)
    return {"queues": [series.answer() for series in listed]}


@endpoint("queues.get_default")
def get_default(call: Call) -> dict[str, Any]:
    with call.store.write() as conn:
        queue_id = queues.ensure_default_queue(conn, call.user)
        doc = get_queue(conn, queue_id) or {}
    return {"id": queue_id, "name": doc.get("name")}


@endpoint("queues.update")
def update_queue(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    metadata = call.dict("metadata")
    try:  # `retries` (README "Retries that know why") is refused here, not found wrong when a task fails
        failure.retries_count((metadata or {}).get(failure.QUEUE_RETRIES_KEY))
    except ValueError as exc:
        raise errors.validation_error(f"Validation error: metadata key {failure.QUEUE_RETRIES_KEY!r}: {exc}") from None
    with call.store.write() as conn:
        doc = queues.load(conn, queue_id)
        require_admin(call, "change a queue")
        tags = {key: call.str_list(key) if call.body.get(key) is not None else None for key in ("tags", "system_tags")}
        fields = queues.update_queue(conn, doc, name=call.str("name"), tags=tags["tags"],
                                     system_tags=tags["system_tags"], metadata=metadata,
                                     display_name=call.str("display_name"),
                                     max_entries=call.int("max_entries", minimum=0, maximum=2**31 - 1))
        if "tags" in fields:  # force_workers:on|off may have changed: waiting daemons look again
            forcing.announce(conn, forcing.queue_key(queue_id))
    if "tags" in fields:
        call.state.wake([forcing.queue_key(queue_id)])
    return {"updated": 1 if fields else 0, "fields": fields}


@endpoint("queues.delete")
def delete_queue(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.write() as conn:
        queues.load(conn, queue_id)
        require_admin(call, "delete a queue")
        queues.delete_queue(conn, queue_id, user=call.user, force=call.bool("force"))
    call.state.known_queues.discard(queue_id)
    return {"deleted": 1}


@endpoint("queues.add_task")
def add_task(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        # A worker hands back what it pulled while stopping: the runner may.
        doc = _queue_and_task(call, conn, queue_id, task_id, "enqueue it", as_runner=True)
        if doc is None:
            raise errors.invalid_task_id(task_id)
        given_back = _given_back(conn, doc)
        handed_back = False
        if not given_back:  # a popped task put back held its place: the limit is for new ones
            queue_limits.require_room(conn, queue_id)
        elif (runner := _runner(call)) is not None and runner == deliveries.runner_of(conn, task_id):
            # Its puller hands it back (a daemon that stopped taking work): its entry as it was, at the front; or the
            # sweep of unstarted deliveries just put it back itself.
            handed_back = deliveries.hand_back(conn, task_id, queue_id) or not _given_back(conn, doc)
        if not handed_back:
            add_entry(conn, queue_id, task_id)
    call.state.wake([queue_id])
    return {"added": 1}


def _given_back(conn: Connection, doc: Document) -> bool:
    """A task still `queued` with no entry in any queue: popped by a worker that puts it back."""
    if tasks.status_of(doc) != TaskStatus.queued:
        return False
    e = s.queue_entries.c
    return conn.execute(select(e.seq).where(e.task == doc["id"]).limit(1)).first() is None


@endpoint("queues.remove_task")
def remove_task(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        _queue_and_task(call, conn, queue_id, task_id, "dequeue it")
        removed = queues.remove_task(conn, queue_id, task_id, user=call.user,
                                     update_status=call.bool("update_task_status", True))
    return {"removed": removed}


@endpoint("queues.clear_queue")
def clear_queue(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.write() as conn:
        queues.load(conn, queue_id)
        require_admin(call, "clear a queue")
        return {"removed_tasks": queues.clear(conn, queue_id, user=call.user)}


@endpoint("queues.peek_task")
def peek_task(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.read() as conn:
        queues.load(conn, queue_id)
        entries = entries_of(conn, [queue_id])[queue_id]
    return {"task": entries[0]["task"]} if entries else {}


@endpoint("queues.get_num_entries")
def get_num_entries(call: Call) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    with call.store.read() as conn:
        queues.load(conn, queue_id)
        return {"num": queues.count(conn, queue_id)}


def _move(call: Call, where: str) -> dict[str, Any]:
    queue_id = call.str("queue", required=True)
    task_id = call.str("task", required=True)
    steps = call.int("count", 1, minimum=1) or 1
    with call.store.write() as conn:
        _queue_and_task(call, conn, queue_id, task_id, "move it in its queue", as_runner=True)
        return {"position": queues.move(conn, queue_id, task_id, where, steps)}


@endpoint("queues.move_task_to_front")
def move_task_to_front(call: Call) -> dict[str, Any]:
    return _move(call, "front")


@endpoint("queues.move_task_to_back")
def move_task_to_back(call: Call) -> dict[str, Any]:
    return _move(call, "back")


@endpoint("queues.move_task_forward")
def move_task_forward(call: Call) -> dict[str, Any]:
    return _move(call, "forward")


@endpoint("queues.move_task_backward")
def move_task_backward(call: Call) -> dict[str, Any]:
    return _move(call, "backward")


# --- the pop ---------------------------------------------------------------------------------------------------------
def _known_queues(call: Call, queue_ids: list[str]) -> None:
    known = call.state.known_queues
    missing = [qid for qid in queue_ids if qid not in known]
    if not missing:
        return
    with call.store.read() as conn:
        found = queues.existing(conn, missing)
    for qid in missing:
        if qid not in found:
            raise errors.invalid_queue_id(qid)
    known.update(found)


Handed = tuple[dict[str, Any], deliveries.Popped]  # a pop's answer, and the entry it took (to give back if unheard)


def pop(call: Call, queue_ids: list[str], worker: str | None = None) -> Handed | None:
    """The head entry of the first non-empty queue, as `queues.get_next_task` answers it (see deliveries.pop). With
    `worker` (a long-polling Conveyor daemon), queues that worker is forced off are skipped."""
    # The pop itself is one statement on PostgreSQL (deliveries.pop): no transaction around it is needed.
    with call.store.write_statements() as conn:
        if worker:
            closed = forcing.closed_queues(conn, worker, queue_ids)
            queue_ids = [qid for qid in queue_ids if qid not in closed]
            if not queue_ids:
                call.closed_to_worker = True
                return None
        popped = deliveries.pop(conn, queue_ids, runner=_runner(call), worker=worker,
                                elsewhere_sec=call.state.settings.retry_elsewhere_sec)
        if popped is None:
            return None
        answer = _answer(popped)
        if call.bool("get_task_info"):
            try:
                doc = get_task(conn, popped.task) or {}
            except Exception:
                # The pop committed by itself: a failed answer must not leave the task held for nobody.
                with call.store.write() as back:
                    deliveries.give_back(back, popped)
                call.state.wake([popped.queue])
                raise
            answer["task_info"] = {"company": doc.get("company", ""), "user": doc.get("user", "")}
        return answer, popped


def _runner(call: Call) -> str | None:
    """The popping access key: it may report on what it pulls."""
    return call.identity.access_key if call.identity is not None else None


def _answer(popped: deliveries.Popped) -> dict[str, Any]:
    return {"entry": {"task": popped.task, "added": iso(popped.added)}, "queue": popped.queue}


async def _pop_on_loop(call: Call, pg: AsyncPg, queue_ids: list[str], worker: str | None) -> Handed | None:
    """`pop` on PostgreSQL's event-loop connections: no thread, and no transaction around its statements."""
    if worker:
        closed = await forcing.closed_on_loop(pg, worker, queue_ids)
        queue_ids = [qid for qid in queue_ids if qid not in closed]
        if not queue_ids:
            call.closed_to_worker = True
            return None
    popped = await deliveries.pop_on_loop(pg, queue_ids, runner=_runner(call), worker=worker,
                                          elsewhere_sec=call.state.settings.retry_elsewhere_sec)
    if popped is None:
        return None
    answer = _answer(popped)
    if call.bool("get_task_info"):
        try:
            rows = await pg.fetch("task_owner", {"id": popped.task})
        except Exception:
            await _give_back(call, popped)  # the pop committed by itself: the task must not stay held for nobody
            raise
        company, user, unread = rows[0] if rows else ("", "", None)
        if unread is not None:
            company = loads(unread).get("company", "")
        answer["task_info"] = {"company": company or "", "user": user or ""}
    return answer, popped


async def _give_back(call: Call, popped: deliveries.Popped) -> None:
    def put_back() -> None:
        with call.store.write() as conn:
            deliveries.give_back(conn, popped)
        call.state.wake([popped.queue])

    if call.store.inline:
        put_back()
    else:
        await in_thread(put_back)


log = logging.getLogger("conveyor.server")

WORKER_ID_MAX = 512  # the length of tasks.puller
RELEASE_MARGIN_SEC = 0.05  # past the end of a retry's hold, so that the next look finds it takeable
POLICY_RECHECK_SEC = 1.0  # the longest wait of a named worker whose queues are all closed to it (_wait_for_entry)


@endpoint("queues.get_next_task", watches=True)
async def get_next_task(call: Call) -> dict[str, Any]:
    """ClearML's pop; our additions: `wait` (seconds) holds the request until an entry arrives, `queues` (a list,
    in priority order) pops from the first non-empty one, and `worker` names the waiting worker: a change of its
    runtime properties or of the queues' tags ends the wait with nothing, so that its daemon looks again."""
    queue_ids = call.str_list("queues") or []
    single = call.str("queue")
    if single:
        queue_ids = [single] + [qid for qid in queue_ids if qid != single]
    if not queue_ids:
        raise errors.missing_field("queue")
    wait = min(call.float("wait", 0.0) or 0.0, call.state.settings.long_poll_max_sec)
    worker = call.str("worker")
    if worker and len(worker) > WORKER_ID_MAX:
        raise errors.validation_error(f"Validation error: field 'worker' holds at most {WORKER_ID_MAX} characters")
    inline = call.store.inline
    keys = [*queue_ids, *map(forcing.queue_key, queue_ids), *([forcing.worker_key(worker)] if worker else [])]

    def known_and_popped() -> Handed | None:
        _known_queues(call, queue_ids)
        return pop(call, queue_ids, worker)

    async def attempt() -> Handed | None:
        if inline:
            return known_and_popped()
        pg = call.store.on_loop
        if pg is not None and call.state.known_queues.issuperset(queue_ids):
            return await _pop_on_loop(call, pg, queue_ids, worker)
        return await in_thread(known_and_popped)  # one hop to a thread per attempt

    if wait <= 0:
        handed = await attempt()
        return handed[0] if handed else {}

    async def held_back_until() -> float | None:
        """When an entry held back from this worker (a retry's, after a failure on it) may go to it: no enqueue
        wakes the long-poll then."""
        elsewhere = call.state.settings.retry_elsewhere_sec
        if not worker or elsewhere <= 0:
            return None
        pg = call.store.on_loop
        if pg is not None:
            return await deliveries.held_back_until_on_loop(pg, queue_ids, worker, elsewhere)

        def read() -> float | None:
            with call.store.read() as conn:
                return deliveries.held_back_until(conn, queue_ids, worker, elsewhere)
        return read() if inline else await in_thread(read)

    with long_poll_waiting():
        return await _wait_for_entry(call, wait, keys, attempt, held_back_until)


async def _wait_for_entry(call: Call, wait: float, keys: list[str], attempt: Callable[[], Awaitable[Handed | None]],
                          held_back_until: Callable[[], Awaitable[float | None]]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    gone = call.disconnected  # completes when the waiting client closes its connection
    while True:
        with call.state.signals.listen(keys) as woken:
            if (gone is not None and gone.done()) or call.state.signals.closing:
                return {}  # nobody to hand an entry to, or the server is stopping: leave it in the queue
            handed = await attempt()
            if handed:
                answer, popped = handed
                if gone is not None:
                    # A disconnect the server has seen but not yet passed to `gone` lands within one loop turn.
                    await asyncio.sleep(0)
                if gone is not None and gone.done():
                    await _give_back(call, popped)  # the waiter left while we popped: keep the task queued
                    return {}
                return answer
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            if call.closed_to_worker:
                # Every queue is closed to this worker (a tag or its `force`) though its daemon found one open: the
                # change landed before this wait began, so no wake-up will come. It ends soon and the daemon looks
                # again; not at once, so that a daemon that keeps disagreeing (another clock) polls once a second.
                deadline = min(deadline, loop.time() + POLICY_RECHECK_SEC)
                remaining = deadline - loop.time()
            try:
                released = await held_back_until()
            except Exception as exc:  # noqa: BLE001 - the wait goes on as before; the next look finds the entry
                log.warning("queues.get_next_task: could not read when a retry held back from %s is released: %s",
                            call.str("worker"), exc.__class__.__name__)
                released = None
            if released is not None:  # look again when that entry may go to this worker
                remaining = min(remaining, max(released - time.time(), 0.0) + RELEASE_MARGIN_SEC)
            await asyncio.wait([woken, gone] if gone is not None else [woken], timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
            if (not woken.done() and loop.time() >= deadline) or call.state.signals.closing:
                return {}
            if woken.done() and woken.result().startswith(forcing.POLICY_PREFIX):
                return {}
