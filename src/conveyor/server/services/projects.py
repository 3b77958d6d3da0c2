"""The `projects` service."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from conveyor.server import query as q
from conveyor.server.call import Call
from conveyor.server.model import projects
from conveyor.server.ownership import require_owner
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s

LISTING = q.Listing(s.projects, default_order=("name",),
                    order={"id": "id", "name": "name", "created": "created", "last_update": "last_update"})


@endpoint("projects.create")
def create(call: Call) -> dict[str, Any]:
    name = projects.check_name(call.str("name", required=True).strip())
    doc = projects.new_project(
        name, user=call.user, company=call.identity.company if call.identity else "",
        description=call.str("description") or "", tags=call.str_list("tags") or [],
        system_tags=call.str_list("system_tags") or [],
        default_output_destination=call.str("default_output_destination"))
    with call.store.write() as conn:
        return {"id": projects.create(conn, doc)}


@endpoint("projects.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"project": projects.load(conn, call.str("project", required=True))}


@endpoint("projects.get_all", aliases=("projects.get_all_ex",), offload=True)
def get_all(call: Call) -> dict[str, Any]:
    query, extra = q.listing(call, select(s.projects.c.doc), LISTING)
    found = q.documents(call, query)
    if call.bool("include_stats"):  # the reference's get_all_ex: tasks by status per project, archived apart
        with call.store.read() as conn:
            counts = projects.status_counts(conn, [p["id"] for p in found if p.get("id")])
        for project in found:
            by_status = counts.get(project.get("id", ""), {})
            project["stats"] = {"active": {"status_count": by_status, "total_tasks": sum(by_status.values())}}
    return {"projects": found, **extra}


@endpoint("projects.update")
def update_project(call: Call) -> dict[str, Any]:
    project_id = call.str("project", required=True)
    with call.store.write() as conn:
        doc = projects.load(conn, project_id)
        require_owner(call, conn, doc, "project", "change it")
        fields: dict[str, Any] = {"name": call.str("name")}
        for key in ("description", "default_output_destination"):
            if call.body.get(key) is not None:
                fields[key] = call.str(key)
        for key in ("tags", "system_tags"):
            if call.body.get(key) is not None:
                fields[key] = call.str_list(key)
        changed = projects.update_project(conn, doc, fields)
    return {"updated": 1 if changed else 0, "fields": changed}


@endpoint("projects.delete")
def delete_project(call: Call) -> dict[str, Any]:
    project_id = call.str("project", required=True)
    with call.store.write() as conn:
        require_owner(call, conn, projects.load(conn, project_id), "project", "delete it")
        count = projects.delete_project(conn, project_id, force=call.bool("force"))
    return {"deleted": 1, "disassociated_tasks": count}


@endpoint("projects.get_unique_metric_variants", offload=True)
def get_unique_metric_variants(call: Call) -> dict[str, Any]:
    """The scalar metrics and variants the tasks of a project (and of its subprojects, unless
    include_subprojects is false; of every project when none is named) report, as their last_metrics name them."""
    project_id = call.str("project")
    with call.store.read() as conn:
        project_ids = None
        if project_id:
            project_ids = projects.with_subprojects(conn, projects.load(conn, project_id),
                                                    call.bool("include_subprojects", True))
        pairs = projects.metric_variants(conn, project_ids, call.str_list("ids"))
    return {"metrics": [{"metric": metric, "metric_hash": metric_hash, "variant": variant, "variant_hash": variant_hash}
                        for (metric, variant), (metric_hash, variant_hash) in sorted(pairs.items())]}
