"""The `projects` service."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.protocol.ids import new_id
from conveyor.server import query as q
from conveyor.server.call import Call
from conveyor.server.codec import dumps, iso, loads, now
from conveyor.server.ownership import require_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s

LISTING = q.Listing(s.projects, default_order=("name",),
                    order={"id": "id", "name": "name", "created": "created", "last_update": "last_update"})


def _load(conn: Connection, project_id: str | None) -> dict[str, Any]:
    if not project_id:
        raise errors.missing_field("project")
    row = conn.execute(select(s.projects.c.doc).where(s.projects.c.id == project_id)).first()
    if row is None:
        raise errors.invalid_project_id(project_id)
    return loads(row[0])


def _name_taken(conn: Connection, name: str) -> bool:
    c = s.projects.c
    return conn.execute(select(c.id).where(func.lower(c.name) == name.lower())).first() is not None


@endpoint("projects.create")
def create(call: Call) -> dict[str, Any]:
    name = call.str("name", required=True).strip()
    if not name or "//" in name or name.endswith("/"):
        raise errors.validation_error(f"Invalid project name {name!r}: use non-empty names separated by single '/'")
    ts = now()
    doc = {"id": new_id(), "name": name, "basename": name.rsplit("/", 1)[-1],
           "description": call.str("description") or "",
           "user": call.user, "company": call.identity.company if call.identity else "", "created": iso(ts),
           "last_update": iso(ts), "tags": call.str_list("tags") or [],
           "system_tags": call.str_list("system_tags") or [],
           "default_output_destination": call.str("default_output_destination")}
    with call.store.write() as conn:
        if _name_taken(conn, name):
            raise errors.project_exists(name)
        conn.execute(s.projects.insert().values(id=doc["id"], name=name, created=ts, last_update=ts,
                                                system_tags=dumps(doc["system_tags"]), doc=dumps(doc)))
    return {"id": doc["id"]}


@endpoint("projects.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"project": _load(conn, call.str("project", required=True))}


@endpoint("projects.get_all", aliases=("projects.get_all_ex",), offload=True)
def get_all(call: Call) -> dict[str, Any]:
    query, extra = q.listing(call, select(s.projects.c.doc), LISTING)
    return {"projects": q.documents(call, query), **extra}


@endpoint("projects.update")
def update_project(call: Call) -> dict[str, Any]:
    project_id = call.str("project", required=True)
    with call.store.write() as conn:
        doc = _load(conn, project_id)
        require_owner(call, conn, doc, "project", "change it")
        fields: dict[str, Any] = {}
        name = call.str("name")
        if name and name != doc["name"]:
            if _name_taken(conn, name):
                raise errors.project_exists(name)
            fields.update(name=name, basename=name.rsplit("/", 1)[-1])
        for key in ("description", "default_output_destination"):
            if call.body.get(key) is not None:
                fields[key] = call.str(key)
        for key in ("tags", "system_tags"):
            if call.body.get(key) is not None:
                fields[key] = call.str_list(key)
        ts = now()
        doc.update(fields, last_update=iso(ts))
        conn.execute(update(s.projects).where(s.projects.c.id == project_id).values(
            name=doc["name"], last_update=ts, system_tags=dumps(doc.get("system_tags") or []), doc=dumps(doc)))
    return {"updated": 1 if fields else 0, "fields": fields}


@endpoint("projects.delete")
def delete_project(call: Call) -> dict[str, Any]:
    project_id = call.str("project", required=True)
    with call.store.write() as conn:
        require_owner(call, conn, _load(conn, project_id), "project", "delete it")
        count = conn.execute(select(func.count()).where(s.tasks.c.project == project_id)).scalar() or 0
        if count and not call.bool("force"):
            raise errors.bad_request(
                f"Project {project_id} still has {count} task(s): delete them or use force=true", 403)
        conn.execute(update(s.tasks).where(s.tasks.c.project == project_id).values(project=None))
        conn.execute(delete(s.projects).where(s.projects.c.id == project_id))
    return {"deleted": 1, "disassociated_tasks": count}
