"""Entry point of `conveyor`: global flags, then one sub-command per module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from conveyor import __version__

# Each module has `register(subparsers)` that adds its commands with `set_defaults(func=...)`.
COMMAND_MODULES = ("up", "server", "agent", "setup", "queue", "task", "worker", "credentials", "user", "build", "slurm",
                   "k8s", "gc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor",
                                     description="Run machine-learning code reproducibly on other machines.")
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


GIT_PASS_FLAG = "--git-pass"
GIT_PASS_ENV = "CLEARML_AGENT_GIT_PASS"


LONG_LIVED = ("daemon", "execute", "build")  # commands that read agent.git_pass from the configuration


def hide_git_pass(argv: list[str]) -> list[str] | None:
    """`--git-pass X` of a long-lived agent command would show in `ps` for as long as it runs: the password moves
    to the environment (CLEARML_AGENT_GIT_PASS, which the configuration reads), and the command line without it is
    returned for a re-exec; None when there is nothing to hide (`init` writes the flag into clearml.conf)."""
    if not any(arg in LONG_LIVED for arg in argv):
        return None
    for i, arg in enumerate(argv):
        if arg == GIT_PASS_FLAG and i + 1 < len(argv):
            os.environ[GIT_PASS_ENV] = argv[i + 1]
            return argv[:i] + argv[i + 2:]
        if arg.startswith(GIT_PASS_FLAG + "="):
            os.environ[GIT_PASS_ENV] = arg.split("=", 1)[1]
            return argv[:i] + argv[i + 1:]
    return None


def main(argv: list[str] | None = None) -> int:
    from conveyor.cli.common import run_command

    if argv is None:
        cleaned = hide_git_pass(sys.argv[1:])
        if cleaned is not None:  # the same process, now without the password in its command line
            os.execv(sys.executable, [sys.executable, "-m", "conveyor", *cleaned])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
