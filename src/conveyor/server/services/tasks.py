"""The `tasks` service: documents, the status machine, enqueue/dequeue, hyper-parameters."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import delete, select

from conveyor.protocol import errors
from conveyor.protocol.ids import new_id
from conveyor.protocol.status import TaskStatus, can_transition
from conveyor.server import query as q
from conveyor.server.call import Call, iso, loads, now
from conveyor.server.ownership import require_task_owner
from conveyor.server.services import endpoint
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.documents import add_entry, get_task, insert_task, remove_entries, save_task
from conveyor.server.store.documents import to_epoch

TASK_TYPES = frozenset(
    {"training", "testing", "inference", "data_processing", "application", "monitor", "controller", "optimizer",
     "service", "qc", "custom"}
)
# Fields `tasks.edit` and `tasks.create` accept; `script` is merged key by key (the agent sends partial scripts
# such as {"version_num": sha}), the others are replaced whole as the SDK sends them.
EDITABLE = ("name", "tags", "system_tags", "type", "comment", "parent", "project", "script", "execution",
            "hyperparams", "configuration", "models", "container", "runtime", "output_dest", "input")
ORDER_COLUMNS = {
    "id": s.tasks.c.id, "name": s.tasks.c.name, "status": s.tasks.c.status, "type": s.tasks.c.type,
    "project": s.tasks.c.project, "user": s.tasks.c.user_id, "created": s.tasks.c.created,
    "last_update": s.tasks.c.last_update, "started": s.tasks.c.started, "completed": s.tasks.c.completed,
    "status_changed": s.tasks.c.status_changed, "last_iteration": s.tasks.c.last_iteration,
    "last_change": s.tasks.c.last_update,
}


def new_task(call: Call, name: str, task_type: str) -> dict[str, Any]:
    stamp = iso(now())
    return {
        "id": new_id(),
        "name": name,
        "user": call.user,
        "company": call.identity.company if call.identity else "",
        "type": task_type,
        "status": TaskStatus.created.value,
        "status_reason": "",
        "status_message": "",
        "comment": "",
        "created": stamp,
        "last_update": stamp,
        "last_change": stamp,
        "status_changed": stamp,
        "tags": [],
        "system_tags": [],
        "script": {},
        "execution": {"parameters": {}, "model_labels": {}, "artifacts": []},
        "hyperparams": {},
        "configuration": {},
        "models": {"input": [], "output": []},
        "container": {},
        "runtime": {},
        "output": {},
        "last_iteration": 0,
        "last_metrics": {},
    }


def _check_type(value: Any) -> str:
    if not isinstance(value, str) or value not in TASK_TYPES:
        raise errors.validation_error(f"Invalid task type {value!r}: use one of {', '.join(sorted(TASK_TYPES))}")
    return value


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
            value = _check_type(value)
        elif field == "output_dest":
            doc.setdefault("output", {})["destination"] = value
            changed.append("output")
            continue
        elif value is not None and not isinstance(value, dict):
            raise errors.validation_error(f"Validation error: field '{field}' must be an object")
        if field == "script" and isinstance(value, dict):
            value = {**(doc.get("script") or {}), **value}
        doc[field] = value
        changed.append(field)
    return changed


def _touch(doc: dict[str, Any], user: str) -> float:
    ts = now()
    doc["last_update"] = doc["last_change"] = iso(ts)
    doc["last_changed_by"] = user
    return ts


def load(conn: Any, task_id: str | None, *, lock: bool = False) -> dict[str, Any]:
    if not task_id:
        raise errors.missing_field("task")
    doc = get_task(conn, task_id, lock=lock)
    if doc is None:
        raise errors.invalid_task_id(task_id)
    return doc


def set_status(
    conn: Any,
    doc: dict[str, Any],
    new_status: str,
    *,
    force: bool,
    user: str = "",
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Move a task along the status machine; returns the changed fields (the `fields` of the answer)."""
    old = doc.get("status") or "created"
    if not force and not can_transition(old, new_status):
        raise errors.invalid_task_status(
            f"cannot change status from {old} to {new_status} (task {doc['id']}); use force=true to override"
        )
    ts = _touch(doc, user)
    doc["status"] = new_status
    if reason is not None:
        doc["status_reason"] = reason
    if message is not None:
        doc["status_message"] = message
    if old != new_status:
        doc["status_changed"] = iso(ts)
    if new_status == "in_progress" and not doc.get("started"):
        doc["started"] = iso(ts)
    if new_status in ("completed", "failed", "stopped", "published") and old != new_status:
        doc["completed"] = iso(ts)
        if doc.get("started"):
            doc["active_duration"] = int(ts - (to_epoch(doc["started"]) or ts))
    if old == "queued" and new_status != "queued":
        remove_entries(conn, doc["id"])
    save_task(conn, doc)
    fields = {"status": new_status, "status_changed": doc["status_changed"], "last_update": doc["last_update"]}
    for key in ("status_reason", "status_message", "started", "completed"):
        if key in doc:
            fields[key] = doc[key]
    return fields


def _status_call(call: Call, new_status: str, *, by_runner: bool = True, **extra: Any) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, f"mark it {new_status.replace('_', ' ')}", as_runner=by_runner)
        fields = set_status(
            conn, doc, new_status, force=call.bool("force"), user=call.user,
            reason=call.str("status_reason"), message=call.str("status_message"),
        )
    return {"updated": 1, "fields": fields, **extra}


# --- create, read, edit -------------------------------------------------------------------------------------------
@endpoint("tasks.create")
def create(call: Call) -> dict[str, Any]:
    name = call.str("name", required=True)
    doc = new_task(call, name, _check_type(call.get("type", "training")))
    _apply_fields(call, doc, call.body)
    with call.store.write() as conn:
        if doc.get("project") and not conn.execute(select(s.projects.c.id).where(s.projects.c.id == doc["project"])).first():
            raise errors.invalid_project_id(doc["project"])
        insert_task(conn, doc)
    return {"id": doc["id"]}


@endpoint("tasks.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"task": load(conn, call.str("task", required=True))}


@endpoint("tasks.get_all", aliases=("tasks.get_all_ex",), offload=True)
def get_all(call: Call) -> dict[str, Any]:
    t = s.tasks.c
    query = select(t.doc)
    ids = call.str_list("id")
    if ids is not None:
        query = query.where(t.id.in_(ids))
    for field, column in (("status", t.status), ("project", t.project), ("type", t.type), ("user", t.user_id),
                          ("parent", t.parent), ("queue", t.queue)):
        values = call.str_list(field) or []
        included = [v for v in values if not v.startswith("-")]
        excluded = [v[1:] for v in values if v.startswith("-")]
        if included:
            query = query.where(column.in_(included))
        if excluded:
            query = query.where(column.not_in(excluded))
    name = call.str("name")
    if name:
        query = query.where(q.name_filter(call, t.name, name))
    for field, column in (("tags", t.tags), ("system_tags", t.system_tags)):
        values = call.str_list(field)
        if values:
            clause = q.tags_filter(column, values)
            if clause is not None:
                query = query.where(clause)
    if ids is None:  # asking by id finds hidden tasks too (the agent's stop check relies on it)
        hidden = q.hidden_filter(call, t.system_tags)
        if hidden is not None:
            query = query.where(hidden)
    query = q.apply_order(call, query, ORDER_COLUMNS, ["-created"])
    query, extra = q.apply_paging(call, query)
    only = call.str_list("only_fields")
    with call.store.read_apart() as conn:
        rows = q.fetch(call, conn, query)
    return {"tasks": [q.project(loads(r[0]), only) for r in rows], **extra}


@endpoint("tasks.edit")
def edit(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "edit it", as_runner=True)
        if not call.bool("force") and doc.get("status") not in ("created", None):
            raise errors.invalid_task_status(
                f"task {task_id} is {doc.get('status')}; only created tasks can be edited (use force=true)"
            )
        changed = _apply_fields(call, doc, call.body)
        _touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1 if changed else 0, "fields": {f: doc.get(f) for f in changed}}


@endpoint("tasks.clone")
def clone(call: Call) -> dict[str, Any]:
    source_id = call.str("task", required=True)
    with call.store.write() as conn:
        src = load(conn, source_id)
        doc = new_task(call, call.str("new_task_name") or src.get("name") or "clone", src.get("type") or "training")
        for field in ("comment", "tags", "system_tags", "script", "hyperparams", "configuration", "container", "project",
                      "models"):
            if field in src:
                doc[field] = copy.deepcopy(src[field])
        execution = copy.deepcopy(src.get("execution") or {})
        execution.pop("queue", None)
        execution.update(call.dict("execution_overrides") or {})
        doc["execution"] = execution
        doc["system_tags"] = [t for t in doc.get("system_tags", []) if t not in ("development", "archived")]
        doc["parent"] = call.str("new_task_parent") or source_id
        doc["output"] = {"destination": (src.get("output") or {}).get("destination")}
        for body_key, field, read in (("new_task_comment", "comment", call.str), ("new_task_tags", "tags", call.str_list),
                                      ("new_task_system_tags", "system_tags", call.str_list),
                                      ("new_task_project", "project", call.str),
                                      ("new_task_hyperparams", "hyperparams", call.dict),
                                      ("new_task_configuration", "configuration", call.dict),
                                      ("new_task_container", "container", call.dict)):
            if call.body.get(body_key) is not None:
                doc[field] = read(body_key)
        if doc.get("project") and not conn.execute(select(s.projects.c.id).where(s.projects.c.id == doc["project"])).first():
            raise errors.invalid_project_id(doc["project"])
        insert_task(conn, doc)
    return {"id": doc["id"], "new_project": None}


@endpoint("tasks.delete")
def delete_task(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "delete it")
        if doc.get("status") == "in_progress" and not call.bool("force"):
            raise errors.invalid_task_status(f"task {task_id} is running; stop it first or use force=true")
        remove_entries(conn, task_id)
        conn.execute(delete(s.events).where(s.events.c.task == task_id))
        conn.execute(delete(s.tasks).where(s.tasks.c.id == task_id))
    return {"deleted": True, "updated_children": 0, "updated_models": 0, "urls": {}}  # a bool, as the SDK parses it


# --- status changes -----------------------------------------------------------------------------------------------
@endpoint("tasks.started")
def started(call: Call) -> dict[str, Any]:
    return _status_call(call, "in_progress", started=1)


@endpoint("tasks.stopped")
def stopped(call: Call) -> dict[str, Any]:
    return _status_call(call, "stopped")


@endpoint("tasks.failed")
def failed(call: Call) -> dict[str, Any]:
    return _status_call(call, "failed")


@endpoint("tasks.completed")
def completed(call: Call) -> dict[str, Any]:
    result = _status_call(call, "completed")  # the publish below: the same caller, already checked
    if call.bool("publish"):
        with call.store.write() as conn:
            doc = load(conn, call.str("task"), lock=True)
            result["fields"] = set_status(conn, doc, "published", force=True, user=call.user)
        result["published"] = 1
    return result


@endpoint("tasks.close")
def close(call: Call) -> dict[str, Any]:
    return _status_call(call, "closed", by_runner=False)


@endpoint("tasks.publish")
def publish(call: Call) -> dict[str, Any]:
    return _status_call(call, "published", by_runner=False)


def worker_alive(conn: Any, worker: str | None) -> bool:
    if not worker:
        return False
    row = conn.execute(select(s.workers.c.last_seen, s.workers.c.timeout).where(s.workers.c.id == worker)).first()
    return bool(row) and row.last_seen + row.timeout > now()


@endpoint("tasks.stop")
def stop(call: Call) -> dict[str, Any]:
    """A task a live worker runs is asked to stop (`stopping`); anything else is stopped at once."""
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "abort it")
        status = doc.get("status")
        development = "development" in (doc.get("system_tags") or [])
        if status == "in_progress" and not development and worker_alive(conn, doc.get("last_worker")):
            _touch(doc, call.user)
            doc["status_message"] = "stopping"
            doc["status_reason"] = call.str("status_reason") or "stopped by user"
            save_task(conn, doc)
            return {"updated": 1, "fields": {"status_message": "stopping", "status_reason": doc["status_reason"]}}
        if status not in ("in_progress", "queued", "created") and not call.bool("force"):
            raise errors.invalid_task_status(f"task {task_id} is {status}; only queued or running tasks can be stopped")
        fields = set_status(conn, doc, "stopped", force=True, user=call.user,
                            reason=call.str("status_reason") or "stopped by user",
                            message=call.str("status_message") or "")
    return {"updated": 1, "fields": fields}


@endpoint("tasks.enqueue")
def enqueue(call: Call) -> dict[str, Any]:
    from conveyor.server.services.queues import default_queue_id, resolve_queue

    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        queue_id = call.str("queue")
        if queue_id:
            queue_id = resolve_queue(conn, queue_id)
        elif call.str("queue_name"):
            queue_id = resolve_queue(conn, call.str("queue_name"))
        else:
            queue_id = default_queue_id(conn)
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "enqueue it")
        old = doc.get("status") or "created"
        if old == "queued":
            raise errors.invalid_task_status(f"task {task_id} is already queued; dequeue it first")
        if not call.bool("force") and old not in ("created", "stopped", "failed", "completed", "closed"):
            raise errors.invalid_task_status(f"task {task_id} is {old}; only a task that is not running can be enqueued")
        doc["system_tags"] = [t for t in doc.get("system_tags") or [] if t != "development"]
        execution = doc.setdefault("execution", {})
        execution["queue"] = queue_id
        doc["enqueue_status"] = old
        fields = set_status(conn, doc, "queued", force=True, user=call.user,
                            reason=call.str("status_reason") or "", message=call.str("status_message") or "")
        add_entry(conn, queue_id, task_id)
        sql.run(conn, "set_runner", {"id": task_id, "runner": None})  # the next pop names the next runner
    call.state.wake([queue_id])
    fields["execution.queue"] = queue_id
    return {"updated": 1, "queued": 1, "fields": fields}


@endpoint("tasks.dequeue")
def dequeue(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "dequeue it", as_runner=True)
        removed = remove_entries(conn, task_id)
        status = doc.get("status")
        if status not in ("queued", "in_progress") and not removed:
            return {"updated": 0, "dequeued": 0}
        new_status = call.str("new_status") or doc.get("enqueue_status") or "created"
        if status == "in_progress" and new_status == "in_progress":
            return {"updated": 1, "dequeued": removed, "fields": {}}
        fields = set_status(conn, doc, new_status, force=True, user=call.user,
                            reason=call.str("status_reason") or "", message=call.str("status_message") or "")
    return {"updated": 1, "dequeued": removed, "fields": fields}


@endpoint("tasks.reset")
def reset(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "reset it")
        if doc.get("status") == "published" and not call.bool("force"):
            raise errors.invalid_task_status(f"task {task_id} is published; use force=true to reset it")
        dequeued = remove_entries(conn, task_id)
        conn.execute(delete(s.events).where(s.events.c.task == task_id))
        for key in ("started", "completed", "active_duration", "last_worker", "last_worker_report", "enqueue_status"):
            doc.pop(key, None)
        doc["last_iteration"] = 0
        doc["last_metrics"] = {}
        doc["output"] = {"destination": (doc.get("output") or {}).get("destination")}
        (doc.setdefault("execution", {})).pop("queue", None)
        if call.bool("clear_all"):
            doc["execution"]["artifacts"] = []
            doc["models"] = {"input": [], "output": []}
        runtime = doc.get("runtime") or {}
        doc["runtime"] = {k: v for k, v in runtime.items() if not k.startswith("_")}
        fields = set_status(conn, doc, "created", force=True, user=call.user, reason=call.str("status_reason") or "",
                            message="")
        sql.run(conn, "set_runner", {"id": task_id, "runner": None})
    return {"updated": 1, "dequeued": {"removed": dequeued} if dequeued else {}, "deleted_models": 0, "urls": {},
            "fields": fields}


@endpoint("tasks.ping")
def ping(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "ping it", as_runner=True)
        doc["last_update"] = iso(now())
        save_task(conn, doc)
    return {}


# --- requirements, parameters, artifacts ---------------------------------------------------------------------------
@endpoint("tasks.set_requirements")
def set_requirements(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    requirements = call.dict("requirements")
    if requirements is None:
        raise errors.missing_field("requirements")
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "edit it", as_runner=True)
        doc.setdefault("script", {})["requirements"] = requirements
        _touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1, "fields": {"script.requirements": requirements}}


def _param_items(call: Call) -> list[dict[str, Any]]:
    items = call.list("hyperparams")
    if items is None:
        raise errors.missing_field("hyperparams")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise errors.validation_error("Validation error: each hyper-parameter needs at least a string 'name'")
        for key in ("section", "type", "description"):
            if not isinstance(item.get(key), (str, type(None))):
                raise errors.validation_error(f"Validation error: hyper-parameter {item['name']!r}: '{key}' must be a string")
    return items


@endpoint("tasks.edit_hyper_params")
def edit_hyper_params(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    items = _param_items(call)
    replace = call.str("replace_hyperparams") or "none"
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "edit it", as_runner=True)
        if not call.bool("force") and doc.get("status") not in ("created", None):
            raise errors.invalid_task_status(f"task {task_id} is {doc.get('status')}; use force=true to edit it")
        params = {} if replace == "all" else doc.get("hyperparams") or {}
        if replace == "section":
            for section in {i.get("section") or "General" for i in items}:
                params[section] = {}
        for item in items:
            section = item.get("section") or "General"
            entry = {"section": section, "name": item["name"], "value": "" if item.get("value") is None else str(item["value"]),
                     "type": item.get("type") or "", "description": item.get("description") or ""}
            params.setdefault(section, {})[item["name"]] = entry
        doc["hyperparams"] = params
        _touch(doc, call.user)
        save_task(conn, doc)
    return {"updated": 1}


@endpoint("tasks.delete_hyper_params")
def delete_hyper_params(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    items = call.list("hyperparams") or []
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), (str, type(None))) for k in ("section", "name")):
            raise errors.validation_error("Validation error: each hyper-parameter to delete is an object with a string "
                                          "'section' and an optional string 'name' (no name: the whole section)")
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "edit it", as_runner=True)
        params = doc.get("hyperparams") or {}
        deleted = 0
        for item in items:
            section = item.get("section") or "General"
            if item.get("name") is None:
                deleted += len(params.pop(section, {}))
            elif params.get(section, {}).pop(item["name"], None) is not None:
                deleted += 1
        doc["hyperparams"] = params
        save_task(conn, doc)
    return {"deleted": deleted}


@endpoint("tasks.get_hyper_params")
def get_hyper_params(call: Call) -> dict[str, Any]:
    ids = call.str_list("tasks")
    if not ids:
        raise errors.missing_field("tasks")
    result = []
    with call.store.read() as conn:
        for task_id in ids:
            doc = load(conn, task_id)
            params = [p for section in (doc.get("hyperparams") or {}).values() for p in section.values()]
            result.append({"task": task_id, "hyperparams": params})
    return {"params": result}


@endpoint("tasks.edit_configuration")
def edit_configuration(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    items = call.list("configuration") or []
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "edit it", as_runner=True)
        config = {} if call.bool("replace_configuration") else doc.get("configuration") or {}
        for item in items:
            if not isinstance(item, dict) or not item.get("name") or not isinstance(item["name"], str):
                raise errors.validation_error("Validation error: each configuration item needs a string 'name'")
            config[item["name"]] = {k: item.get(k, "") for k in ("name", "value", "type", "description")}
        doc["configuration"] = config
        save_task(conn, doc)
    return {"updated": 1}


@endpoint("tasks.get_configurations")
def get_configurations(call: Call) -> dict[str, Any]:
    ids = call.str_list("tasks") or []
    names = call.str_list("names")
    result = []
    with call.store.read() as conn:
        for task_id in ids:
            config = load(conn, task_id).get("configuration") or {}
            result.append({"task": task_id, "configuration": [v for k, v in config.items() if not names or k in names]})
    return {"configurations": result}


@endpoint("tasks.add_or_update_artifacts")
def add_or_update_artifacts(call: Call) -> dict[str, Any]:
    task_id = call.str("task", required=True)
    artifacts = call.list("artifacts") or []
    with call.store.write() as conn:
        doc = load(conn, task_id, lock=True)
        require_task_owner(call, conn, doc, "edit it", as_runner=True)
        current = {(a.get("key"), a.get("mode", "output")): a for a in (doc.get("execution") or {}).get("artifacts", [])}
        for art in artifacts:
            if not isinstance(art, dict) or not art.get("key") or not isinstance(art["key"], str) \
                    or not isinstance(art.get("mode", "output"), str):
                raise errors.validation_error("Validation error: each artifact needs a string 'key' (and 'mode', if given)")
            current[(art["key"], art.get("mode", "output"))] = art
        doc.setdefault("execution", {})["artifacts"] = list(current.values())
        save_task(conn, doc)
    return {"updated": 1}
