"""Who may change what. Everyone reads everything, creates tasks and enqueues their own tasks on any queue;
an `admin` may change anything; a `user` changes only the tasks (and projects) they own; and a worker may report on
a task it pulled off a queue: the access key that popped a task is its *runner* until the task is enqueued again
or reset, so an agent running with any credential can start, edit, log to and end the tasks it runs, and nothing
else of other people's."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from conveyor.protocol import errors
from conveyor.server.call import Call
from conveyor.server.codec import Document
from conveyor.server.model.users import user_name
from conveyor.server.store import sql


def require_admin(call: Call, doing: str) -> None:
    if not call.is_admin:
        raise errors.forbidden(f"only an admin can {doing}; you are {_who(call)}")


def owns(call: Call, doc: Document) -> bool:
    """An admin, or the document's owner: who may change it without more to look up."""
    return call.is_admin or bool(call.user and doc.get("user") == call.user)


def may_change_task(call: Call, conn: Connection, doc: Document, *, as_runner: bool = False) -> bool:
    if owns(call, doc):
        return True
    if as_runner and call.identity is not None:
        row = sql.run(conn, "get_runner", {"id": doc["id"]}).fetchone()
        return bool(row and row[0] and row[0] == call.identity.access_key)
    return False


def require_task_owner(call: Call, conn: Connection, doc: Document, doing: str, *, as_runner: bool = False) -> None:
    """403 unless the caller owns the task, is an admin, or (with `as_runner`) pulled it off a queue."""
    if may_change_task(call, conn, doc, as_runner=as_runner):
        return
    owner = user_name(conn, doc.get("user"))
    raise errors.forbidden(f"task {doc['id']} belongs to {owner}; only its owner or an admin can {doing}")


def require_owner(call: Call, conn: Connection, doc: Document, kind: str, doing: str) -> None:
    """The same rule for other owned documents (projects)."""
    if owns(call, doc):
        return
    owner = user_name(conn, doc.get("user"))
    raise errors.forbidden(f"{kind} {doc.get('name') or doc['id']} belongs to {owner}; only its owner or an admin "
                           f"can {doing}")


def _who(call: Call) -> str:
    if call.identity is None:
        return "not logged in"
    return f"{call.identity.user_name or call.identity.user} (role {call.identity.role})"
