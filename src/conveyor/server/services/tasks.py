"""The `tasks` service: documents, the status machine, enqueue/dequeue, hyper-parameters."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from conveyor.protocol import errors, failure
from conveyor.protocol.ids import looks_like_id
from conveyor.protocol.status import TaskStatus
from conveyor.protocol.task_types import DEFAULT_TASK_TYPE
from conveyor.server import query as q
from conveyor.server.call import Call
from conveyor.server.codec import Document, iso, loads, now
from conveyor.server.model import queues, retries, task_edits, tasks, timeline
from conveyor.server.ownership import owns, require_task_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store import known_docs, sql
from conveyor.server.store import schema as s
from conveyor.server.store.documents import save_task, task_columns
from conveyor.server.threads import in_thread
from conveyor.server.traffic import count_enqueued

if TYPE_CHECKING:
    from conveyor.server.store.async_pg import AsyncPg

S = TaskStatus

# Fields `tasks.edit` and `tasks.create` accept; `script` and `execution` are merged key by key as the reference
# merges its embedded documents (the agent sends partial scripts such as {"version_num": sha}), the others are
# replaced whole as the SDK sends them.
MERGED = ("script", "execution")
EDITABLE = ("name", "tags", "system_tags", "type", "comment", "parent", "project", "script", "execution",
            "hyperparams", "configuration", "models", "container", "runtime", "output_dest", "input")
UPDATABLE = ("name", "tags", "system_tags", "comment", "project")  # tasks.update: any status
LISTING = q.Listing(
    s.tasks, tag_columns=("tags", "system_tags"), default_order=("-created",),
    order={"id": "id", "name": "name", "status": "status", "type": "type", "project": "project", "user": "user_id",
           "created": "created", "last_update": "last_update", "started": "started", "completed": "completed",
           "status_changed": "status_changed", "last_iteration": "last_iteration", "last_change": "last_update"},
)


def _apply_fields(call: Call, doc: dict[str, Any], body: dict[str, Any]) -> list[str]:
    changed = []
    for field in EDITABLE:
        if field not in body:
            continue
        value = body[field]
        if field in ("tags", "system_tags"):
            value = call.str_list(field) or []
        elif field in ("name", "comment", "parent", "project"):
            if value is not None and not isinstance(value, str):
                raise errors.validation_error(f"Validation error: field '{field}' must be a string")
            if field == "name" and not value:
                raise errors.validation_error("Validation error: a task name cannot be empty")
        elif field == "type":
            value = tasks.check_type(value)
        elif field == "output_dest":
            doc.setdefault("output", {})["destination"] = value
            changed.append("output")
            continue
        elif value is not None and not isinstance(value, dict):
            raise errors.validation_error(f"Validation error: field '{field}' must be an object")
        elif field == "hyperparams" and value is not None:
            value = task_edits.hyperparams_field(value)
        elif field == "configuration" and value is not None:
            value = task_edits.configuration_field(value)
        elif field == "container":
            value = task_edits.container_field(value)
        elif field == "script" and value is not None:
            value = task_edits.script_field(value)
        if field in MERGED and isinstance(value, dict):
            value = {**(doc.get(field) or {}), **value}
        doc[field] = value
        changed.append(field)
    return changed


def _owned(call: Call, conn: Connection, task_id: str, doing: str) -> Document:
    """The task, locked, once the caller is known to own it or run it."""
    doc = tasks.load(conn, task_id, lock=True)
    require_task_owner(call, conn, doc, doing, as_runner=True)
    return doc


def _editable(call: Call, conn: Connection, task_id: str) -> Document:
    """The task to edit: owned or run by the caller, and still a draft (`created`) unless the call forces it (the
    SDK and the agents edit the task they run with force=true)."""
    doc = _owned(call, conn, task_id, "edit it")
    status = tasks.status_of(doc)
    if not call.bool("force") and status != S.created:
        raise errors.invalid_task_status(
            f"task {task_id} is {status}: only a draft (created) task can be edited — clone it and edit the clone, "
            "or reset it to draft (force=true edits it anyway)")
    return doc


def _tasks_named(call: Call) -> list[Document]:
    """The tasks of the call's `tasks` list, in its order (an unknown id is a 400)."""
    with call.store.read() as conn:
        return [tasks.load(conn, task_id) for task_id in call.str_list("tasks") or []]


def _status_call(call: Call, new_status: str, *, by_runner: bool = True, **extra: Any) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, f"mark it {new_status.replace('_', ' ')}", as_runner=by_runner)
        if call.body.get("timeline") is not None:  # Conveyor's agent sends its run's timeline with the final status
            doc["timeline"] = timeline.checked(call.body["timeline"])
        fields = tasks.set_status(
            conn, doc, new_status, force=call.bool("force"), user=call.user,
            reason=call.str("status_reason"), message=call.str("status_message"),
        )
    return {"updated": 1, "fields": fields, **extra}


# --- create, read, edit -------------------------------------------------------------------------------------------
def _company(call: Call) -> str:
    return call.identity.company if call.identity else ""


@endpoint("tasks.create")
def create(call: Call) -> dict[str, Any]:
    name = call.str("name", required=True)
    doc = tasks.new_task(name, tasks.check_type(call.get("type", DEFAULT_TASK_TYPE.value)), user=call.user,
                         company=_company(call))
    _apply_fields(call, doc, call.body)
    with call.store.write() as conn:
        return {"id": tasks.create(conn, doc)}


@endpoint("tasks.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"task": tasks.load(conn, call.str("task", required=True))}


@endpoint("tasks.get_all", aliases=("tasks.get_all_ex",), offload=True)
def get_all(call: Call) -> dict[str, Any]:
    t = s.tasks.c
    query = select(t.doc)
    for field, column in (("status", t.status), ("project", t.project), ("type", t.type), ("user", t.user_id),
                          ("parent", t.parent), ("queue", t.queue)):
        values = call.str_list(field) or []
        included = [v for v in values if not v.startswith("-")]
        excluded = [v[1:] for v in values if v.startswith("-")]
        if included:
            query = query.where(column.in_(included))
        if excluded:
            query = query.where(column.not_in(excluded))
    # Asking by id finds hidden tasks too (the agent's stop check relies on it).
    query, extra = q.listing(call, query, LISTING)
    return {"tasks": q.documents(call, query), **extra}


@endpoint("tasks.edit")
def edit(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = _editable(call, conn, task_id)
        project = doc.get("project")
        changed = _apply_fields(call, doc, call.body)
        if doc.get("project") != project:  # a moved task: to a project that exists
            tasks.check_project(conn, doc.get("project"))
        tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1 if changed else 0, "fields": {f: doc.get(f) for f in changed}}


@endpoint("tasks.update")
def update(call: Call) -> dict[str, Any]:
    """What may change whatever the task's status: its name, comment, tags and project, and the status message a
    glue writes while the task waits in a cluster (`slurm job 12 pending: Resources`), as the reference agent does."""
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = _owned(call, conn, task_id, "update it")
        changed = _apply_fields(call, doc, {k: v for k, v in call.body.items() if k in UPDATABLE})
        # only while the task waits: a late write must not hide a runner's message (an abort's "stopping")
        if "status_message" in call.body and tasks.status_of(doc) == S.queued:
            doc["status_message"] = call.str("status_message") or ""
            changed.append("status_message")
        tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1 if changed else 0, "fields": {f: doc.get(f) for f in changed}}


@endpoint("tasks.clone")
def clone(call: Call) -> dict[str, Any]:
    source_id = call.str("task", required=True)
    with call.store.write() as conn:
        src = tasks.load(conn, source_id)
        doc = tasks.new_task(call.str("new_task_name") or src.get("name") or "clone",
                             src.get("type") or DEFAULT_TASK_TYPE.value, user=call.user, company=_company(call))
        for field in ("comment", "tags", "system_tags", "script", "hyperparams", "configuration", "container",
                      "project", "models"):
            if field in src:
                doc[field] = copy.deepcopy(src[field])
        execution = copy.deepcopy(src.get("execution") or {})
        execution.pop("queue", None)
        execution.update(call.dict("execution_overrides") or {})
        doc["execution"] = execution
        doc["system_tags"] = [t for t in doc.get("system_tags", []) if t not in (tasks.DEVELOPMENT, "archived")]
        doc["parent"] = call.str("new_task_parent") or source_id
        doc["output"] = {"destination": (src.get("output") or {}).get("destination")}
        # the new hyper-parameters, configuration and container are checked and stored as tasks.edit stores them
        for body_key, field, read in (("new_task_comment", "comment", call.str),
                                      ("new_task_tags", "tags", call.str_list),
                                      ("new_task_system_tags", "system_tags", call.str_list),
                                      ("new_task_project", "project", call.str),
                                      ("new_task_hyperparams", "hyperparams",
                                       lambda key: task_edits.hyperparams_field(call.body[key])),
                                      ("new_task_configuration", "configuration",
                                       lambda key: task_edits.configuration_field(call.body[key])),
                                      ("new_task_container", "container",
                                       lambda key: task_edits.container_field(call.body[key]))):
            if call.body.get(body_key) is not None:
                doc[field] = read(body_key)
        tasks.create(conn, doc)
    return {"id": doc["id"], "new_project": None}


@endpoint("tasks.delete")
def delete_task(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "delete it")
        tasks.delete_task(conn, doc, force=call.bool("force"))
    return {"deleted": True, "updated_children": 0, "updated_models": 0, "urls": {}}  # a bool, as the SDK parses it


# --- status changes -----------------------------------------------------------------------------------------------
@endpoint("tasks.started")
def started(call: Call) -> dict[str, Any]:
    return _status_call(call, S.in_progress, started=1)


@endpoint("tasks.stopped")
def stopped(call: Call) -> dict[str, Any]:
    return _status_call(call, S.stopped)


@endpoint("tasks.failed")
def failed(call: Call) -> dict[str, Any]:
    """A run failed. Conveyor's `failure_class` (protocol/failure.py; none: the task's) is recorded with it as an
    attempt, and an infrastructure failure goes back to the front of its queue while its `retries` allow."""
    task_id = call.str("task", required=True)
    given = call.get(failure.FIELD)
    failure_class = failure.parse(given) or failure.FailureClass.task
    if given not in (None, "") and failure.parse(given) is None:
        raise errors.validation_error(f"Validation error: {failure.FIELD} must be one of "
                                      f"{', '.join(c.value for c in failure.FailureClass)}, not {given!r}")
    woken: str | None = None
    with call.store.write() as conn:
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "mark it failed", as_runner=True)
        if _failure_of_an_ended_run(call, conn, doc):
            return {"updated": 0, "fields": {}}
        if call.body.get("timeline") is not None:  # Conveyor's agent sends its run's timeline with the final status
            doc["timeline"] = timeline.checked(call.body["timeline"])
        was = tasks.status_of(doc)
        reason = call.str("status_reason")
        fields = tasks.set_status(conn, doc, S.failed, force=call.bool("force"), user=call.user, reason=reason,
                                  message=call.str("status_message"))
        if was in (S.in_progress, S.queued):  # a run (or its start) failed: an attempt
            worker = (doc.get("status_history") or [{}])[-1].get("worker") or doc.get("last_worker")
            woken = retries.after_failure(conn, doc, failure_class, reason=reason or "", worker=worker,
                                          user=call.user)
            if woken:
                fields = {"status": doc["status"], "status_reason": doc["status_reason"],
                          "status_changed": doc["status_changed"], "last_update": doc["last_update"]}
            fields[failure.FIELD] = failure_class.value
    if woken:
        call.state.wake([woken])
    return {"updated": 1, "fields": fields}


def _failure_of_an_ended_run(call: Call, conn: Connection, doc: Document) -> bool:
    """A `tasks.failed` that reaches a task a retry put back on its queue, and that no runner pulled since or another
    one did: it reports the run the retry already ended (a resend, after its answer was lost, of the call that queued
    the retry). Answered as a no-op, as the reference answers one (updated 0): it must not count as another attempt
    nor take the retry off its queue. The runner that pulled the retry may fail it (a job that never started)."""
    if not retries.requeued_by_retry(doc):
        return False
    row = sql.run(conn, "get_runner", {"id": doc["id"]}).fetchone()
    runner = row[0] if row else None
    return runner is None or call.identity is None or runner != call.identity.access_key


@endpoint("tasks.completed")
def completed(call: Call) -> dict[str, Any]:
    result = _status_call(call, S.completed, published=0)  # the publish below: the same caller, already checked
    if call.bool("publish"):
        with call.store.write() as conn:
            doc = tasks.load(conn, call.str("task"), lock=True)
            result["fields"] = tasks.set_status(conn, doc, S.published.value, force=True, user=call.user)
        result["published"] = 1
    return result


@endpoint("tasks.close")
def close(call: Call) -> dict[str, Any]:
    return _status_call(call, S.closed, by_runner=False)


@endpoint("tasks.publish")
def publish(call: Call) -> dict[str, Any]:
    return _status_call(call, S.published, by_runner=False, committed_versions_results=[])


@endpoint("tasks.stop")
def stop(call: Call) -> dict[str, Any]:
    """A task a live worker runs is asked to stop (`stopping`); anything else is stopped at once."""
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "abort it")
        fields = tasks.stop(conn, doc, user=call.user, force=call.bool("force"), reason=call.str("status_reason"),
                            message=call.str("status_message"))
    return {"updated": 1, "fields": fields}


@endpoint("tasks.enqueue")
async def enqueue(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    queue = call.str("queue") or call.str("queue_name")
    pg = call.store.on_loop
    if pg is not None and queue and looks_like_id(queue):  # a queue's name is resolved on the locked path
        answer = await _enqueue_on_loop(call, pg, task_id, queue)
        if answer is not None:
            return answer
    if call.store.inline:
        return _enqueue(call, task_id, queue)
    return await in_thread(_enqueue, call, task_id, queue)


def _enqueue(call: Call, task_id: str, queue: str | None) -> dict[str, Any]:
    with call.store.write() as conn:
        if conn.dialect.name == "postgresql":
            # As on the event loop: a task row held by a long transaction (a psql session, which the loop's statement
            # skips) makes the enqueue a 503 that clients retry, not a thread held forever.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {sql.LOCK_TIMEOUT_MS}")
        queue_id, queue_doc = queues.queue_to_enqueue_on(conn, queue)
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "enqueue it")
        fields = tasks.enqueue(conn, doc, queue_id, user=call.user, force=call.bool("force"), queue=queue_doc,
                               reason=call.str("status_reason") or "", message=call.str("status_message") or "")
    call.state.wake([queue_id])
    return {"updated": 1, "queued": 1, "fields": fields}


NUL = "\\u0000"  # as JSON escapes it: the enqueue leaves a queue whose document holds one to the locked path
ENQUEUE_READS = 3  # reads of a task that changes under the enqueue each time, before the locked path takes over


async def _enqueue_on_loop(call: Call, pg: AsyncPg, task_id: str, queue_id: str) -> dict[str, Any] | None:
    """The enqueue on PostgreSQL's event-loop connections: one statement that saves the task only if it is still as
    this process knew it (known_docs.py), and adds its entry; else a read and that statement again. None leaves the
    call to `_enqueue` (a transaction, the task locked): a queue named by its name, missing or with an entry limit,
    a task missing or not the caller's (the error says why), or a task that changed under each read."""
    stored = known_docs.TASKS.get(task_id)
    guessed = stored is not None  # only what was read decides a refusal
    for _ in range(ENQUEUE_READS + guessed):
        if stored is None:
            ((queue_doc, stored),) = await pg.fetch("enqueue_read", {"q": queue_id, "t": task_id,
                                                                    "most": known_docs.MAX_DOC_BYTES})
            if queue_doc is None or stored is None or NUL in queue_doc or loads(queue_doc).get("max_entries"):
                return None  # the locked path says what is missing, or handles what the write cannot
            guessed = False
        doc = loads(stored)
        if not owns(call, doc):
            return None
        try:
            fields = tasks.to_queued(doc, queue_id, user=call.user, force=call.bool("force"),
                                     reason=call.str("status_reason") or "", message=call.str("status_message") or "")
        except errors.ApiError:
            if not guessed:
                raise
            stored = None
            continue
        columns = task_columns(doc)
        if await pg.enqueue({"id": task_id, "old": stored, "q": queue_id, "a": time.time(), **columns}):
            known_docs.TASKS.remember(task_id, columns["doc"])
            count_enqueued(queue_id)  # the statement woke this process's long-polls (AsyncPg.woken)
            return {"updated": 1, "queued": 1, "fields": fields}
        stored = None  # changed since, or its queue cannot take it: read both
    return None


@endpoint("tasks.dequeue")
def dequeue(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "dequeue it", as_runner=True)
        removed, fields = tasks.dequeue(conn, doc, user=call.user, new_status=call.str("new_status"),
                                        reason=call.str("status_reason") or "",
                                        message=call.str("status_message") or "")
    if fields is None:
        return {"updated": 0, "dequeued": 0, "fields": {}}
    return {"updated": 1, "dequeued": removed, "fields": fields}


@endpoint("tasks.reset")
def reset(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = tasks.load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "reset it")
        dequeued, fields = tasks.reset(conn, doc, user=call.user, force=call.bool("force"),
                                       clear_all=call.bool("clear_all"), reason=call.str("status_reason") or "")
    return {"updated": 1, "dequeued": {"removed": dequeued} if dequeued else {}, "deleted_models": 0, "urls": {},
            "fields": fields}


@endpoint("tasks.ping")
def ping(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = _owned(call, conn, task_id, "ping it")
        doc["last_update"] = iso(now())
        save_task(conn, doc)
    return {}


# --- requirements, parameters, artifacts ---------------------------------------------------------------------------
@endpoint("tasks.set_requirements")
def set_requirements(call: Call) -> dict[str, Any]:
    """Any status, as the reference: the agent and the SDK record what a running task installed."""
    task_id = call.str("task", required=True)
    if call.body.get("requirements") is None:
        raise errors.missing_field("requirements")
    requirements = task_edits.requirements_field(call.body["requirements"])
    with call.store.write() as conn:
        doc = _owned(call, conn, task_id, "edit it")
        doc.setdefault("script", {})["requirements"] = requirements
        tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1, "fields": {"script.requirements": requirements}}


@endpoint("tasks.edit_hyper_params")
def edit_hyper_params(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    if call.body.get("hyperparams") is None:
        raise errors.missing_field("hyperparams")
    items = task_edits.param_items(call.body["hyperparams"])
    replace = task_edits.replace_mode(call.body.get("replace_hyperparams"))
    with call.store.write() as conn:
        doc = _editable(call, conn, task_id)
        params = {} if replace == "all" else doc.get("hyperparams") or {}
        if replace == "section":
            for section in {item["section"] for item in items}:
                params[section] = {}
        for item in items:
            params.setdefault(item["section"], {})[item["name"]] = item
        doc["hyperparams"] = params
        tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1}


@endpoint("tasks.delete_hyper_params")
def delete_hyper_params(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    if call.body.get("hyperparams") is None:
        raise errors.missing_field("hyperparams")
    keys = task_edits.param_keys(call.body["hyperparams"])
    with call.store.write() as conn:
        doc = _editable(call, conn, task_id)
        params = doc.get("hyperparams") or {}
        deleted = 0
        for section, name in keys:
            if name is None:
                deleted += len(params.pop(section, None) or {})
            elif (params.get(section) or {}).pop(name, None) is not None:
                deleted += 1
                if not params[section]:
                    del params[section]
        doc["hyperparams"] = params
        if deleted:
            tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"deleted": deleted}


@endpoint("tasks.get_hyper_params")
def get_hyper_params(call: Call) -> dict[str, Any]:
    if not call.str_list("tasks"):
        raise errors.missing_field("tasks")
    return {"params": [
        {"task": doc["id"], "hyperparams": [p for section in (doc.get("hyperparams") or {}).values()
                                            for p in section.values()]}
        for doc in _tasks_named(call)]}


@endpoint("tasks.edit_configuration")
def edit_configuration(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    if call.body.get("configuration") is None:
        raise errors.missing_field("configuration")
    items = task_edits.config_items(call.body["configuration"])
    with call.store.write() as conn:
        doc = _editable(call, conn, task_id)
        config = {} if call.bool("replace_configuration") else doc.get("configuration") or {}
        for item in items:
            config[item["name"]] = item
        doc["configuration"] = config
        tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1}


@endpoint("tasks.delete_configuration")
def delete_configuration(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    names = call.str_list("configuration")
    if names is None:
        raise errors.missing_field("configuration")
    with call.store.write() as conn:
        doc = _editable(call, conn, task_id)
        config = doc.get("configuration") or {}
        deleted = sum(config.pop(name, None) is not None for name in names)
        doc["configuration"] = config
        if deleted:
            tasks.touch(doc, call.user)
        save_task(conn, doc)
    return {"deleted": deleted}


@endpoint("tasks.get_configurations")
def get_configurations(call: Call) -> dict[str, Any]:
    names = call.str_list("names")
    return {"configurations": [
        {"task": doc["id"], "configuration": [v for k, v in (doc.get("configuration") or {}).items()
                                              if not names or k in names]}
        for doc in _tasks_named(call)]}


@endpoint("tasks.add_or_update_artifacts")
def add_or_update_artifacts(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    artifacts = call.list("artifacts") or []
    with call.store.write() as conn:
        doc = _owned(call, conn, task_id, "edit it")
        known = (doc.get("execution") or {}).get("artifacts", [])
        current = {(a.get("key"), a.get("mode", "output")): a for a in known}
        for art in artifacts:
            if not isinstance(art, dict) or not art.get("key") or not isinstance(art["key"], str) \
                    or not isinstance(art.get("mode", "output"), str):
                raise errors.validation_error(
                    "Validation error: each artifact needs a string 'key' (and 'mode', if given)")
            current[(art["key"], art.get("mode", "output"))] = art
        doc.setdefault("execution", {})["artifacts"] = list(current.values())
        save_task(conn, doc)
    return {"updated": 1}
