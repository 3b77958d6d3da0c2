"""`conveyor server`: the control plane on SQLite (default) or PostgreSQL."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the Conveyor server (ClearML-compatible API and web UI)")
    p.add_argument("--host", help="address to bind (default conveyor.server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default conveyor.server.port, 8008)")
    p.add_argument("--db", help="database URL: postgresql://user@host/db; default SQLite in the data dir")
    p.add_argument("--data-dir", help="where the SQLite database lives (default ~/.conveyor)")
    p.add_argument("--client-config", help="where to write first-start credentials (default ~/clearml.conf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conveyor.cli.common import config_of
    from conveyor.server.runner import options_from, serve

    cfg = config_of(args)
    opts = options_from(cfg, host=args.host, port=args.port, db=args.db, data_dir=args.data_dir,
                        client_config=args.client_config)
    return serve(cfg, opts)
