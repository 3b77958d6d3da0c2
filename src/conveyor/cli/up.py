"""`conveyor up`: the all-in-one start: an embedded server (SQLite) and one agent serving the default queue."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a server and an agent on this machine (SQLite, queue `default`)")
    p.add_argument("--port", type=int, help="server port (default conveyor.server.port, 8008)")
    p.add_argument("--data-dir", help="where the server keeps its database (default ~/.conveyor)")
    p.add_argument("--db", help="database URL instead of SQLite")
    p.add_argument("--queue", nargs="+", default=["default"], help="queues the agent serves (created if missing)")
    p.add_argument("--services-mode", nargs="?", type=int, const=0, default=None, metavar="N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conveyor.agent.up import up

    return up(config_file=args.config_file, port=args.port, data_dir=args.data_dir, db=args.db, queues=args.queue,
              services_mode=args.services_mode)
