"""`conveyor worker list`: the agents the server hears from."""

from __future__ import annotations

import argparse
from typing import Any

from conveyor.cli._output import age, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="list the workers (agents) the server hears from")
    cmds = p.add_subparsers(dest="worker_command", metavar="ACTION", required=True)
    ls = cmds.add_parser("list", help="list live workers: their queues, current task, state (forced off, idle by "
                                      "schedule) and last report")
    ls.add_argument("--json", action="store_true", help="print the server's data as JSON")
    ls.set_defaults(func=list_workers)


def _row(worker: dict[str, Any]) -> tuple[str, ...]:
    queues = ", ".join(q.get("name") or q.get("id", "") for q in worker.get("queues") or [])
    task = worker.get("task") or {}
    current = f"{task.get('id', '')} ({task['name']})" if task.get("name") else task.get("id", "")
    last = worker.get("last_report_time") or worker.get("last_activity_time")
    state = worker.get("state") or ""
    shown = "" if state in ("", "active") else worker.get("state_reason") or state.replace("_", " ")
    return worker["id"], queues, current, shown, age(last)


def list_workers(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of

    data = client_of(args).call("workers.get_all", {})
    if args.json:
        print_json(data)
        return 0
    print_table(("WORKER", "QUEUES", "TASK", "STATE", "LAST REPORT"), [_row(w) for w in data.get("workers") or []],
                empty="No live workers — start one with `conveyor daemon --queue NAME`")
    return 0
