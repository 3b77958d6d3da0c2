"""`conveyor init` (write a clearml.conf, never over an existing one) and `conveyor config` (what is in force)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("init", help="write ~/clearml.conf for this machine: paste the credentials block, answer the "
                                    "questions (clearml-agent init); never over an existing file")
    i.add_argument("--api-host", help="API server URL, e.g. http://127.0.0.1:8008")
    i.add_argument("--web-host", help="web UI URL (default: the API server's)")
    i.add_argument("--files-host", help="files server URL (default: <api host>/files)")
    i.add_argument("--access-key")
    i.add_argument("--secret-key")
    i.add_argument("--git-user", help="git user for cloning private repositories over https")
    i.add_argument("--git-pass", help="git password or token")
    i.add_argument("--extra-index-url", help="another package index for the tasks' Python packages")
    i.add_argument("--no-verify", action="store_true", help="write the file without logging in first")
    i.set_defaults(func=run_init)

    c = sub.add_parser("config", help="print the configuration in force (secrets masked)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_config)


def run_init(args: argparse.Namespace) -> int:
    from conveyor.agent.setup import InitAnswers, init

    answers = InitAnswers(args.api_host, args.web_host, args.files_host, args.access_key, args.secret_key,
                          args.git_user, args.git_pass, args.extra_index_url)
    return init(answers, config_file=args.config_file, verify=not args.no_verify)


def run_config(args: argparse.Namespace) -> int:
    import json

    from conveyor.cli.common import config_of

    cfg = config_of(args)
    print(f"# {cfg.path or 'no configuration file: built-in defaults and environment'}")
    print(json.dumps(cfg.as_dict(masked=True), indent=2) if args.json else cfg.to_hocon(masked=True))
    return 0
