"""The `auth` service: login (Basic → JWT, or Bearer refresh) and credential management.

Credentials belong to a user. A `user` manages their own; an admin sees and revokes everyone's, and creates them for
any user (`user`, a name or id: our addition to `auth.create_credentials`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select, update

from conveyor.protocol import errors
from conveyor.server.call import Call
from conveyor.server.codec import iso, now
from conveyor.server.model.users import create_credentials, find_user
from conveyor.server.ownership import require_admin
from conveyor.server.services.registry import endpoint
from conveyor.server.store import schema as s


@endpoint("auth.login", authorize=False)
def login(call: Call) -> dict[str, Any]:
    token = call.state.auth.login(call.headers.get("authorization"), call.int("expiration_sec", minimum=1))
    return {"token": token}


@endpoint("auth.create_credentials")
def create(call: Call) -> dict[str, Any]:
    label = call.str("label") or ""
    with call.store.write() as conn:
        owner = call.user
        wanted = call.str("user")
        if wanted:
            row = find_user(conn, wanted)
            if row is None:
                raise errors.bad_request(f"No user named {wanted!r} (users.get_all lists them)")
            if row.id != call.user:
                require_admin(call, "create credentials for another user")
            owner = row.id
        access_key, secret_key = create_credentials(conn, owner, label)
    return {"credentials": {"access_key": access_key, "secret_key": secret_key, "label": label}}


def _mine(call: Call) -> ColumnElement[bool] | None:
    """The credentials this caller may see and change: all of them for an admin."""
    return None if call.is_admin else (s.credentials.c.user_id == call.user)


@endpoint("auth.get_credentials")
def get(call: Call) -> dict[str, Any]:
    c, u = s.credentials.c, s.users.c
    query = (select(c.access_key, c.label, c.created, c.last_used, c.revoked, c.user_id, u.name)
             .select_from(s.credentials.outerjoin(s.users, u.id == c.user_id)).order_by(c.created))
    mine = _mine(call)
    if mine is not None:
        query = query.where(mine)
    with call.store.read() as conn:
        rows = conn.execute(query).all()
    include_revoked = call.bool("include_revoked")
    return {"credentials": [
        {"access_key": r.access_key, "label": r.label, "created": iso(r.created), "last_used": iso(r.last_used),
         "user": r.user_id, "user_name": r.name or "", **({"revoked": iso(r.revoked)} if r.revoked else {})}
        for r in rows if include_revoked or not r.revoked
    ]}


@endpoint("auth.revoke_credentials")
def revoke(call: Call) -> dict[str, Any]:
    access_key = call.str("access_key", required=True)
    c = s.credentials.c
    query = update(s.credentials).where(c.access_key == access_key, c.revoked.is_(None))
    mine = _mine(call)
    if mine is not None:
        query = query.where(mine)
    with call.store.write() as conn:
        result = conn.execute(query.values(revoked=now()))
    if not result.rowcount:
        raise errors.bad_request(f"No active credentials with access key {access_key}"
                                 + ("" if call.is_admin else " among yours"), 51)
    call.state.auth.forget_credentials()
    return {"revoked": 1}


@endpoint("auth.edit_credentials")
def edit(call: Call) -> dict[str, Any]:
    access_key = call.str("access_key", required=True)
    query = update(s.credentials).where(s.credentials.c.access_key == access_key)
    mine = _mine(call)
    if mine is not None:
        query = query.where(mine)
    with call.store.write() as conn:
        result = conn.execute(query.values(label=call.str("label") or ""))
    return {"updated": result.rowcount}
