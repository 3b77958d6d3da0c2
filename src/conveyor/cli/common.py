"""What every command shares: loading the config, making a client, turning known errors into one clear line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from conveyor.config import Config, load_config
from conveyor.errors import ConveyorError

if TYPE_CHECKING:  # imported where used: `conveyor --help` need not load httpx
    from conveyor.client.api import ApiClient


def config_of(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config_file", None))


def client_of(args: argparse.Namespace) -> ApiClient:
    from conveyor.client import ApiClient

    return ApiClient.from_config(config_of(args))


def run_command(args: argparse.Namespace) -> int:
    """Run the command; a user's mistake or an unreachable server is one line on stderr and exit 2, no traceback."""
    from conveyor.client.errors import ApiCallError, AuthError

    try:
        result: Any = args.func(args)
    except ApiCallError as exc:
        # A refusal (403) says whose the thing is and who may change it: that message alone is the clearest line.
        refused = exc.code == 403 and not isinstance(exc, AuthError)
        print(f"conveyor: {exc.msg if refused else exc}", file=sys.stderr)
        return 2
    except ConveyorError as exc:  # ConfigError, SpecError, RepoError…: their message is the whole story
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`conveyor task list | head`): no traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
