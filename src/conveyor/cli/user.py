"""`conveyor user create|list`: the people (and agents) that credentials belong to, with their role."""

from __future__ import annotations

import argparse

from conveyor.cli._output import local_time, print_created, print_json, print_table, required_name

ROLES = ("admin", "user")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("user", help="create and list users (admins only create)")
    cmds = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    c = cmds.add_parser("create", help="create a user; then `conveyor credentials create --user NAME` gives them a key")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--role", choices=ROLES, default="user",
                   help="admin: may change everything; user (default): changes only their own tasks, reads all")
    c.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    c.set_defaults(func=create)

    ls = cmds.add_parser("list", help="list users and their roles")
    ls.add_argument("--json", action="store_true", help="print the server's data as JSON")
    ls.set_defaults(func=list_users)


def create(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of
    from conveyor.client.errors import ApiCallError
    from conveyor.client.task_builder import SpecError

    name = required_name(args.name, "user", "alice")
    try:
        answer = client_of(args).call("users.create", {"name": name, "role": args.role})
    except ApiCallError as exc:
        if exc.code == 403:
            raise SpecError(f"{exc.msg} — ask an admin to create the user") from None
        if exc.code == 400 and "already exists" in exc.msg:
            raise SpecError(f"A user named {name!r} already exists — `conveyor user list` shows it") from None
        raise
    print_created(answer, args.json)
    return 0


def list_users(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of

    client = client_of(args)
    data = client.call("users.get_all")
    if args.json:
        print_json(data)
        return 0
    me = client.claims.get("identity", {}).get("user")
    rows = [(u.get("name", "") + (" *" if u["id"] == me else ""), u["id"], u.get("role", ""),
             local_time(u.get("created"))) for u in data.get("users") or []]
    print_table(("NAME", "ID", "ROLE", "CREATED"), rows, empty="No users")
    if any(u["id"] == me for u in data.get("users") or []):
        print("(* the user this command acts as)")
    return 0
