"""`conveyor gc`: remove what Conveyor leaves behind on this machine (cached venvs, build folders, images) and, on
the server's host, old task logs; by age and by total size, with a dry run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from conveyor.cli._output import print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gc", help="remove old cached venvs, build folders, Conveyor's images and old task logs",
                       description="Remove what Conveyor leaves on this machine: venv cache entries, build folders "
                                   "under agent.venvs_dir and the images Conveyor built, unused for longer than "
                                   "--older-than, then least recently used first down to --max-size. What a running "
                                   "task uses stays. --server-logs-older-than prunes the console logs of ended tasks "
                                   "from the server's database (run it on the server's host).")
    p.add_argument("--older-than", metavar="AGE", help="remove what was unused this long: 14d, 12h, 2w")
    p.add_argument("--max-size", metavar="SIZE", help="then keep at most this much in all: 20G, 500M")
    p.add_argument("--dry-run", action="store_true", help="list what would go and how much it frees; remove nothing")
    p.add_argument("--only", nargs="+", choices=("venvs", "folders", "images"), metavar="KIND",
                   help="venvs, folders and/or images (default: all three)")
    p.add_argument("--server-logs-older-than", metavar="AGE",
                   help="delete the console logs of tasks that ended this long ago (scalars and plots stay)")
    p.add_argument("--db", metavar="URL",
                   help="the server's database URL (default conveyor.server.db, else SQLite in the data dir)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="the server's data dir, of its SQLite database (default conveyor.server.data_dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from conveyor.agent import gc
    from conveyor.cli.common import config_of
    from conveyor.errors import UserError

    if not (args.older_than or args.max_size or args.server_logs_older_than):
        raise UserError("Nothing to collect", hint="Give --older-than AGE, --max-size SIZE and/or "
                                                   "--server-logs-older-than AGE, e.g. `conveyor gc --older-than 14d`")
    older_than = gc.parse_duration(args.older_than) if args.older_than else None
    max_size = gc.parse_size(args.max_size) if args.max_size else None
    logs_older_than = gc.parse_duration(args.server_logs_older_than) if args.server_logs_older_than else None
    cfg = config_of(args)
    verb = "would free" if args.dry_run else "freed"
    if older_than is not None or max_size is not None:
        kinds = set(args.only or ("venvs", "folders", "images"))
        items = [*(gc.venv_cache_items(cfg) if "venvs" in kinds else []),
                 *(gc.build_folder_items(cfg) if "folders" in kinds else []),
                 *(gc.image_items(cfg) if "images" in kinds else [])]
        outcomes = gc.run(gc.plan(items, older_than=older_than, max_size=max_size), dry_run=args.dry_run)
        gone = [o for o in outcomes if o.kept is None]
        print_table(("", "KIND", "SIZE", "WHY", "WHAT"),
                    [("would remove" if args.dry_run else "removed", o.item.kind, gc.human_size(o.item.size),
                      o.reason, o.item.name) for o in gone]
                    + [("kept", o.item.kind, gc.human_size(o.item.size), o.kept, o.item.name)
                       for o in outcomes if o.kept is not None])
        kept = len(outcomes) - len(gone)
        print(f"{verb} {gc.human_size(sum(o.item.size for o in gone))}: {len(gone)} of {len(items)} items"
              + (f" ({kept} in use, kept)" if kept else ""))
    if logs_older_than is not None:
        pruned = _prune_server_logs(args, cfg, logs_older_than)
        print(f"{verb} {gc.human_size(pruned.bytes)} of server logs: "
              f"{pruned.lines} lines of {pruned.tasks} ended tasks")
    return 0


def _prune_server_logs(args: argparse.Namespace, cfg: Any, older_than: float) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from conveyor.errors import UserError
    from conveyor.server.retention import prune_logs
    from conveyor.server.runner import options_from
    from conveyor.server.store import Store, StoreError

    url = options_from(cfg, db=args.db, data_dir=args.data_dir).db
    if url.startswith("sqlite:///") and not Path(url.split("///", 1)[1]).is_file():
        raise UserError(f"No server database at {url.split('///', 1)[1]}",
                        hint="Run this on the server's host, or name it with --db URL or --data-dir")
    store = Store(url)
    try:
        return prune_logs(store, older_than, dry_run=args.dry_run)
    except (SQLAlchemyError, StoreError) as exc:
        orig = getattr(exc, "orig", None)
        reason = (str(orig or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"Cannot prune the logs in {store.safe_url}: {reason}") from None
    finally:
        store.dispose()
