"""Projects: named folders of tasks (`a/b/c`), unique by name regardless of case."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.protocol.ids import new_id
from conveyor.server.codec import Document, dumps, iso, loads, now, to_epoch
from conveyor.server.store import schema as s


def load(conn: Connection, project_id: str | None) -> Document:
    if not project_id:
        raise errors.missing_field("project")
    row = conn.execute(select(s.projects.c.doc).where(s.projects.c.id == project_id)).first()
    if row is None:
        raise errors.invalid_project_id(project_id)
    doc: Document = loads(row[0])
    return doc


def _name_taken(conn: Connection, name: str) -> bool:
    c = s.projects.c
    return conn.execute(select(c.id).where(func.lower(c.name) == name.lower())).first() is not None


def check_name(name: str) -> str:
    if not name or "//" in name or name.endswith("/"):
        raise errors.validation_error(f"Invalid project name {name!r}: use non-empty names separated by single '/'")
    return name


def new_project(name: str, *, user: str, company: str, description: str, tags: list[str], system_tags: list[str],
                default_output_destination: str | None) -> Document:
    stamp = iso(now())
    return {"id": new_id(), "name": name, "basename": name.rsplit("/", 1)[-1], "description": description,
            "user": user, "company": company, "created": stamp, "last_update": stamp, "tags": tags,
            "system_tags": system_tags, "default_output_destination": default_output_destination}


def _columns(doc: Document) -> dict[str, object]:
    return {"name": doc["name"], "last_update": to_epoch(doc["last_update"]),
            "system_tags": dumps(doc.get("system_tags") or []), "doc": dumps(doc)}


def create(conn: Connection, doc: Document) -> str:
    if _name_taken(conn, doc["name"]):
        raise errors.project_exists(doc["name"])
    conn.execute(s.projects.insert().values(id=doc["id"], created=to_epoch(doc["created"]), **_columns(doc)))
    return str(doc["id"])


def update_project(conn: Connection, doc: Document, fields: Document) -> Document:
    """Apply the changed fields (a new `name` renames, if no other project has it); returns them."""
    name = fields.pop("name", None)
    if name and name != doc["name"]:
        if _name_taken(conn, name):
            raise errors.project_exists(name)
        fields = {"name": name, "basename": name.rsplit("/", 1)[-1], **fields}
    doc.update(fields, last_update=iso(now()))
    conn.execute(update(s.projects).where(s.projects.c.id == doc["id"]).values(**_columns(doc)))
    return fields


def delete_project(conn: Connection, project_id: str, *, force: bool) -> int:
    """Delete a project; its tasks (only with force, if it has any) stay, in no project. Returns how many."""
    count = int(conn.execute(select(func.count()).where(s.tasks.c.project == project_id)).scalar() or 0)
    if count and not force:
        raise errors.bad_request(f"Project {project_id} still has {count} task(s): delete them or use force=true", 403)
    conn.execute(update(s.tasks).where(s.tasks.c.project == project_id).values(project=None))
    conn.execute(delete(s.projects).where(s.projects.c.id == project_id))
    return count


def with_subprojects(conn: Connection, doc: Document, include: bool) -> list[str]:
    """The project's id and, with `include`, those of the projects below it (`a/b` is below `a`)."""
    if not include:
        return [doc["id"]]
    c = s.projects.c
    below = conn.execute(select(c.id).where(c.name.startswith(doc["name"] + "/", autoescape=True))).scalars().all()
    return [doc["id"], *below]


def metric_variants(conn: Connection, project_ids: list[str] | None,
                    task_ids: list[str] | None) -> dict[tuple[str, str], tuple[str, str]]:
    """(metric, variant) -> (metric hash, variant hash) from the last_metrics of the projects' tasks (or all)."""
    query = select(s.tasks.c.doc)
    if project_ids is not None:
        query = query.where(s.tasks.c.project.in_(project_ids))
    if task_ids:
        query = query.where(s.tasks.c.id.in_(task_ids))
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for (raw,) in conn.execute(query):
        for metric_hash, variants in (loads(raw).get("last_metrics") or {}).items():
            for variant_hash, entry in (variants or {}).items():
                if isinstance(entry, dict) and "metric" in entry:
                    found[(entry["metric"], entry.get("variant", ""))] = (metric_hash, variant_hash)
    return found


def status_counts(conn: Connection, project_ids: list[str]) -> dict[str, dict[str, int]]:
    """project -> {status: number of its tasks}, archived tasks left out: the `stats.active.status_count` of
    `projects.get_all_ex` with `include_stats` (one grouped count, however many tasks there are)."""
    if not project_ids:
        return {}
    t = s.tasks.c
    # All the tasks, less the archived ones: two counts read from indexes (ix_tasks_project_status and the partial
    # ix_tasks_archived), where one count of the unarchived would read every task's row.
    query = select(t.project, t.status, func.count()).where(t.project.in_(project_ids)).group_by(t.project, t.status)
    counts: dict[str, dict[str, int]] = {}
    for project, status, number in conn.execute(query):
        counts.setdefault(project, {})[status] = int(number)
    # On PostgreSQL each count reads its own snapshot (READ COMMITTED): a task archived, or changing status, between
    # the two may be counted in one and not the other, so a count never goes below zero nor names a missing status.
    for project, status, number in conn.execute(query.where(s.ARCHIVED)):
        by_status = counts.get(project, {})
        left = by_status.get(status, 0) - int(number)
        if left > 0:
            by_status[status] = left
        else:
            by_status.pop(status, None)
    return {project: by_status for project, by_status in counts.items() if by_status}
