"""`conveyor queue create|list|delete`: the queues agents pull tasks from."""

from __future__ import annotations

import argparse

from conveyor.cli._output import print_created, print_json, print_table, required_name

QUEUE_EXISTS = 704  # result subcode of queues.create for a name already taken


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="create, list and delete queues")
    cmds = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    c = cmds.add_parser("create", help="create a queue")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--tags", nargs="+", default=[], metavar="TAG", help="tags of the queue")
    c.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    c.set_defaults(func=create)

    ls = cmds.add_parser("list", help="list queues with the number of tasks waiting in each")
    ls.add_argument("--json", action="store_true", help="print the server's data as JSON")
    ls.set_defaults(func=list_queues)

    d = cmds.add_parser("delete", help="delete a queue")
    d.add_argument("queue", metavar="NAME_OR_ID")
    d.add_argument("--force", action="store_true", help="delete it even with tasks waiting (they go back to created)")
    d.set_defaults(func=delete)


def create(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of
    from conveyor.client.errors import ApiCallError
    from conveyor.client.task_builder import SpecError

    name = required_name(args.name, "queue", "gpu")
    try:
        answer = client_of(args).call("queues.create", {"name": name, "tags": args.tags})
    except ApiCallError as exc:
        if exc.subcode == QUEUE_EXISTS:
            raise SpecError(f"A queue named {name!r} already exists — `conveyor queue list` shows it") from None
        raise
    print_created(answer, args.json)
    return 0


def _note(queue: dict) -> str:
    """Why a glue does not pull the queue now (its job limit), from the queue's metadata."""
    from conveyor.protocol.tags import QUEUE_LIMIT_NOTE

    entry = (queue.get("metadata") or {}).get(QUEUE_LIMIT_NOTE) or {}
    return str(entry.get("value") or "") if isinstance(entry, dict) else ""


def list_queues(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of

    data = client_of(args).call("queues.get_all", {"order_by": ["name"]})
    if args.json:
        print_json(data)
        return 0
    rows = [(q.get("name", ""), q["id"], len(q.get("entries") or []), " ".join(q.get("tags") or []), _note(q))
            for q in data.get("queues") or []]
    print_table(("NAME", "ID", "ENTRIES", "TAGS", "NOTE"), rows,
                empty="No queues yet — `conveyor queue create NAME` makes one")
    return 0


def delete(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of
    from conveyor.client.task_builder import SpecError, find_queue

    client = client_of(args)
    queue = find_queue(client, args.queue)
    waiting = len(client.call("queues.get_by_id", {"queue": queue["id"]}).get("queue", {}).get("entries") or [])
    if waiting and not args.force:
        raise SpecError(f"Queue {queue['name']!r} has {waiting} task(s) waiting — use --force to delete it anyway "
                        "(the tasks go back to created)")
    client.call("queues.delete", {"queue": queue["id"], "force": bool(args.force)})
    print(f"Deleted queue {queue['name']} ({queue['id']})")
    return 0

