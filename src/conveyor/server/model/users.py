"""Users and their credentials: who may call the API, as what role. Secrets are stored hashed (see auth.py)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from conveyor.errors import map_exceptions
from conveyor.protocol import errors
from conveyor.protocol.ids import new_id
from conveyor.server.auth import hash_secret, new_credentials
from conveyor.server.store import schema as s

ROLES = ("admin", "user")


def ensure_user(conn: Connection, name: str = "Conveyor Admin") -> str:
    """The first user; created (as an admin) on the first start."""
    row = conn.execute(select(s.users.c.id).order_by(s.users.c.created).limit(1)).first()
    if row:
        return row[0]
    return create_user(conn, name, "admin")


def create_user(conn: Connection, name: str, role: str) -> str:
    if role not in ROLES:
        raise errors.validation_error(f"Invalid role {role!r}: use one of {', '.join(ROLES)}")
    if not name.strip():
        raise errors.validation_error("Validation error: a user name cannot be empty")
    def taken(_: BaseException | None = None) -> errors.ApiError:
        return errors.bad_request(f"A user named {name!r} already exists")

    if find_user(conn, name) is not None:
        raise taken()
    user_id = new_id()
    # IntegrityError: the same name made at the same moment by another call (ux_users_name)
    with map_exceptions({IntegrityError: taken}):
        conn.execute(s.users.insert().values(id=user_id, name=name, role=role, created=time.time()))
    return user_id


def find_user(conn: Connection, name_or_id: str) -> Row[Any] | None:
    """The users row with this id, else with this name (case-insensitive); None when there is none."""
    u = s.users.c
    row = conn.execute(select(s.users).where(u.id == name_or_id)).first()
    if row is None:
        row = conn.execute(select(s.users).where(func.lower(u.name) == name_or_id.lower())).first()
    return row


def user_name(conn: Connection, user_id: str | None) -> str:
    row = conn.execute(select(s.users.c.name).where(s.users.c.id == user_id)).first() if user_id else None
    return row[0] if row else f"an unknown user ({user_id or 'none'})"


def create_credentials(conn: Connection, user_id: str, label: str = "") -> tuple[str, str]:
    access_key, secret_key = new_credentials()
    conn.execute(
        s.credentials.insert().values(
            access_key=access_key, secret_hash=hash_secret(secret_key), user_id=user_id, label=label,
            created=time.time(),
        )
    )
    return access_key, secret_key
