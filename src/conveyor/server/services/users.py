"""The `users` service: who the caller is, who else there is, and (admins) making users."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select

from conveyor.protocol import errors
from conveyor.server.auth import COMPANY_ID, COMPANY_NAME
from conveyor.server.call import Call
from conveyor.server.codec import iso
from conveyor.server.model.users import create_user
from conveyor.server.ownership import require_admin
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s


def _user(row: Row[Any]) -> dict[str, Any]:
    first, _, last = row.name.partition(" ")
    return {"id": row.id, "name": row.name, "given_name": first, "family_name": last, "role": row.role,
            "company": {"id": COMPANY_ID, "name": COMPANY_NAME}, "created": iso(row.created), "avatar": None,
            "preferences": {}}


@endpoint("users.get_current_user")
def get_current_user(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        row = conn.execute(select(s.users).where(s.users.c.id == call.user)).first()
    if row is None:
        raise errors.ApiError(400, 400, f"Invalid user id: {call.user}")
    return {"user": _user(row), "getting_started": {}, "settings": {"max_download_items": 1000}}


@endpoint("users.get_all", aliases=("users.get_all_ex",))
def get_all(call: Call) -> dict[str, Any]:
    with call.store.read() as conn:
        rows = conn.execute(select(s.users).order_by(s.users.c.created)).all()
    ids = call.str_list("id")
    return {"users": [_user(r) for r in rows if not ids or r.id in ids]}


@endpoint("users.get_by_id")
def get_by_id(call: Call) -> dict[str, Any]:
    user_id = call.str("user", required=True)
    with call.store.read() as conn:
        row = conn.execute(select(s.users).where(s.users.c.id == user_id)).first()
    if row is None:
        raise errors.ApiError(400, 400, f"Invalid user id: {user_id}")
    return {"user": _user(row)}


@endpoint("users.create")
def create(call: Call) -> dict[str, Any]:
    """Conveyor's own call (the reference makes users through its login provider): `name`, `role` admin|user."""
    require_admin(call, "create users")
    name = call.str("name", required=True).strip()
    with call.store.write() as conn:
        user_id = create_user(conn, name, call.str("role") or "user")
    return {"id": user_id}
