"""`conveyor init`: ask for the server and credentials, check them by logging in, write the config file."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from conveyor.client.errors import ConveyorError
from conveyor.config import display_path, write_api_section


@dataclass
class InitAnswers:
    api_host: str | None
    web_host: str | None
    files_host: str | None
    access_key: str | None
    secret_key: str | None
    git_user: str | None
    git_pass: str | None


def _ask(prompt: str, default: str | None = None, secret: bool = False) -> str:
    if not sys.stdin.isatty() and not secret:
        line = sys.stdin.readline()
        value = line.strip()
    else:
        suffix = f" [{default}]" if default else ""
        value = (getpass.getpass(f"{prompt}: ") if secret else input(f"{prompt}{suffix}: ")).strip()
    return value or (default or "")


def init(answers: InitAnswers, config_file: str | None = None, verify: bool = True) -> int:
    target = Path(config_file or os.environ.get("CLEARML_CONFIG_FILE") or "~/clearml.conf").expanduser()
    if target.exists():
        print(f"conveyor: {display_path(target)} already exists and is left as it is; edit it, or remove it and run "
              "`conveyor init` again", file=sys.stderr)
        return 2
    api = answers.api_host or _ask("API server", "http://127.0.0.1:8008")
    if not api.startswith(("http://", "https://")):
        print(f"conveyor: {api!r} is not a URL: give it as http://host:port", file=sys.stderr)
        return 2
    api = api.rstrip("/")
    key = answers.access_key or _ask("Access key")
    secret = answers.secret_key or _ask("Secret key", secret=True)
    if not key or not secret:
        print("conveyor: an access key and a secret key are needed (create them with `conveyor credentials create`)",
              file=sys.stderr)
        return 2
    if verify:
        from conveyor.client import ApiClient

        try:
            with ApiClient(api, key, secret, max_retries=1) as client:
                client.login()
        except ConveyorError as exc:
            print(f"conveyor: {exc}", file=sys.stderr)
            print("conveyor: nothing was written; fix the answers, or pass --no-verify to write them anyway",
                  file=sys.stderr)
            return 2
    agent = {}
    if answers.git_user:
        agent["git_user"] = answers.git_user
    if answers.git_pass:
        agent["git_pass"] = answers.git_pass
    write_api_section(target, api, answers.web_host or api, answers.files_host or f"{api}/files", key, secret,
                      agent=agent or None)
    print(f"Wrote {display_path(target)}; `conveyor config` shows the settings in force.")
    return 0
