"""Entry point of `conveyor`: global flags, then one sub-command per module."""

from __future__ import annotations

import argparse
import importlib
import sys

from conveyor import __version__

# Each module has `register(subparsers)` that adds its commands with `set_defaults(func=...)`.
COMMAND_MODULES = ("up", "server", "agent", "setup", "queue", "task", "worker", "credentials", "user", "build")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Run machine-learning code reproducibly on other machines.")
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    parser.add_argument("--config-file", help="clearml.conf to read (default: $CLEARML_CONFIG_FILE or ~/clearml.conf)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"conveyor.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"conveyor.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from conveyor.cli.common import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
