"""The `auth` service: login (Basic → JWT, or Bearer refresh) and credential management."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from conveyor.protocol import errors
from conveyor.server.auth import create_credentials
from conveyor.server.call import Call, iso, now
from conveyor.server.services import endpoint
from conveyor.server.store import schema as s


@endpoint("auth.login", authorize=False)
def login(call: Call) -> dict[str, Any]:
    token = call.state.auth.login(call.headers.get("authorization"), call.int("expiration_sec", minimum=1))
    return {"token": token}


@endpoint("auth.create_credentials")
def create(call: Call) -> dict[str, Any]:
    with call.store.write() as conn:
        access_key, secret_key = create_credentials(conn, call.user, call.str("label") or "")
    return {"credentials": {"access_key": access_key, "secret_key": secret_key, "label": call.str("label") or ""}}


@endpoint("auth.get_credentials")
def get(call: Call) -> dict[str, Any]:
    c = s.credentials.c
    with call.store.read() as conn:
        rows = conn.execute(select(c.access_key, c.label, c.created, c.last_used, c.revoked).where(
            c.user_id == call.user).order_by(c.created)).all()
    include_revoked = call.bool("include_revoked")
    return {"credentials": [
        {"access_key": r.access_key, "label": r.label, "created": iso(r.created), "last_used": iso(r.last_used),
         **({"revoked": iso(r.revoked)} if r.revoked else {})}
        for r in rows if include_revoked or not r.revoked
    ]}


@endpoint("auth.revoke_credentials")
def revoke(call: Call) -> dict[str, Any]:
    access_key = call.str("access_key", required=True)
    c = s.credentials.c
    with call.store.write() as conn:
        result = conn.execute(update(s.credentials).where(c.access_key == access_key, c.user_id == call.user,
                                                          c.revoked.is_(None)).values(revoked=now()))
    if not result.rowcount:
        raise errors.bad_request(f"No active credentials with access key {access_key}", 51)
    call.state.auth.forget_revocations()
    return {"revoked": 1}


@endpoint("auth.edit_credentials")
def edit(call: Call) -> dict[str, Any]:
    access_key = call.str("access_key", required=True)
    c = s.credentials.c
    with call.store.write() as conn:
        result = conn.execute(update(s.credentials).where(c.access_key == access_key, c.user_id == call.user).values(
            label=call.str("label") or ""))
    return {"updated": result.rowcount}
