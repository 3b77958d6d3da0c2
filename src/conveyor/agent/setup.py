"""`conveyor init`, as `clearml-agent init`: take the credentials block pasted from a server's credentials page,
ask for the hosts, git credentials and an extra package index, check the login, write the config file (never over
an existing one)."""

from __future__ import annotations

import getpass
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from conveyor.config import display_path, write_api_section
from conveyor.errors import ConveyorError, UserError

DEFAULT_API_HOST = "http://127.0.0.1:8008"
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


class InitError(UserError):
    """An answer `init` cannot use; the message says what to do (and never holds a secret)."""


@dataclass
class InitAnswers:
    api_host: str | None
    web_host: str | None
    files_host: str | None
    access_key: str | None
    secret_key: str | None
    git_user: str | None
    git_pass: str | None
    extra_index_url: str | None = None


class Prompter:
    """Questions on stdout, answers from stdin. Each prompt is flushed before the read, so that it shows when the
    answers come through a pipe; getpass (no echo) only on a terminal, where it has one to use."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.tty = self.stdin.isatty()

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def _readline(self) -> str:
        line = self.stdin.readline()
        if not self.tty:  # the answer is not echoed from a pipe: end the prompt's line ourselves
            self.stdout.write("\n")
            self.stdout.flush()
        return line

    def ask(self, question: str, default: str = "", secret: bool = False) -> str:
        prompt = f"{question} [{default}]: " if default else f"{question}: "
        if secret and self.tty:
            value = getpass.getpass(prompt)
        else:
            self.stdout.write(prompt)
            self.stdout.flush()
            value = self._readline()
        return value.strip() or default

    def block(self, question: str) -> str:
        """Lines up to the end of the pasted block: where its braces balance (a brace-less `access_key: …` /
        `secret_key: …` pair ends with its second line). An empty first line answers "no block"."""
        self.say(question)
        lines: list[str] = []
        while True:
            line = self.stdin.readline()
            if not line or (not lines and not line.strip()):
                break
            lines.append(line)
            text = _QUOTED.sub('""', "".join(lines))
            if ("{" in text and text.count("{") <= text.count("}")) or \
                    ("{" not in text and "access_key" in text and "secret_key" in text):
                break
        if not self.tty:
            self.stdout.write("\n")
            self.stdout.flush()
        return "".join(lines)


def parse_credentials_block(text: str) -> dict[str, str]:
    """The hosts and keys of an `api { web_server … credentials { "access_key" = …, "secret_key" = … } }` block
    (a ClearML server's "Create new credentials" dialog), of a bare `credentials { … }`, or of `access_key: …` and
    `secret_key: …` lines (`conveyor credentials create`, a Conveyor server's first start)."""
    from pyhocon import ConfigFactory, ConfigTree
    from pyhocon.exceptions import ConfigException
    from pyparsing import ParseBaseException

    try:
        tree = ConfigFactory.parse_string(text)
    except (ParseBaseException, ConfigException):
        raise InitError("The pasted text is not a credentials block — paste the whole `api { … }` block from the "
                        "server's credentials page, or answer the first question with an empty line and type "
                        "the keys") from None
    api = tree.get("api", tree) if isinstance(tree.get("api", None), ConfigTree) else tree
    creds = api.get("credentials", api) if isinstance(api.get("credentials", None), ConfigTree) else api
    found = {name: str(api.get(name)).strip() for name in ("api_server", "web_server", "files_server")
             if api.get(name, None)}
    for name in ("access_key", "secret_key"):
        if creds.get(name, None):
            found[name] = str(creds.get(name)).strip()
    if "access_key" not in found or "secret_key" not in found:
        raise InitError("The pasted block holds no access_key and secret_key — copy the whole block the "
                        "credentials page shows")
    return found


def default_hosts(api_host: str, conveyor: bool) -> tuple[str, str]:
    """The web and files hosts that go with an API host: a Conveyor server serves all three itself (files under
    /files); a ClearML server follows its naming: api.* → app.* and files.*, port 8008 → 8080 and 8081."""
    api_host = api_host.rstrip("/")
    if conveyor:
        return api_host, f"{api_host}/files"
    parts = urlsplit(api_host)
    host = parts.hostname or ""
    if host.startswith("api."):
        netloc = parts.netloc.replace(host, "app." + host[4:], 1), parts.netloc.replace(host, "files." + host[4:], 1)
    elif parts.port == 8008:
        netloc = parts.netloc.replace(":8008", ":8080"), parts.netloc.replace(":8008", ":8081")
    else:
        return api_host, api_host
    return tuple(urlunsplit(parts._replace(netloc=n)) for n in netloc)  # type: ignore[return-value]


def _url(value: str, what: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise InitError(f"{what} {value!r} is not a URL — give it as http://host:port")
    return value.rstrip("/")


def _login(api: str, key: str, secret: str) -> dict:
    from conveyor.client import ApiClient

    try:
        with ApiClient(api, key, secret, max_retries=1) as client:
            return client.login()
    except ConveyorError as exc:  # the server refused the keys, or is not there
        raise InitError(f"{exc} — nothing was written; check the answers, or pass --no-verify to write them "
                        "anyway") from None


def init(answers: InitAnswers, config_file: str | None = None, verify: bool = True,
         prompter: Prompter | None = None) -> int:
    target = Path(config_file or os.environ.get("CLEARML_CONFIG_FILE") or "~/clearml.conf").expanduser()
    if target.exists():
        raise InitError(f"{display_path(target)} already exists and is left as it is — edit it, or remove it and "
                        "run `conveyor init` again")
    ask = prompter or Prompter()
    # Scripted (hosts and keys given as options): no questions; the rest takes its defaults.
    interactive = not (answers.api_host and answers.access_key and answers.secret_key)
    pasted: dict[str, str] = {}
    if interactive:
        ask.say(f"Conveyor set-up: writes {display_path(target)}")
        if not (answers.access_key and answers.secret_key):
            text = ask.block("Paste the credentials block from the server's credentials page (ClearML: Settings > "
                             "Workspace > Create new credentials; Conveyor: `conveyor credentials create`), "
                             "or press Enter to type the keys:")
            if text.strip():
                pasted = parse_credentials_block(text)
    api = _url(answers.api_host or pasted.get("api_server") or ask.ask("API server", DEFAULT_API_HOST), "API server")
    key = answers.access_key or pasted.get("access_key") or ask.ask("Access key")
    secret = answers.secret_key or pasted.get("secret_key") or ask.ask("Secret key", secret=True)
    if not key or not secret:
        raise InitError("An access key and a secret key are needed — create them with `conveyor credentials "
                        "create` (or on a ClearML server's credentials page)")
    if pasted:
        ask.say(f"Detected credentials: access key {key}, API server {api}")
    conveyor = not (urlsplit(api).hostname or "").startswith("api.")  # unverified: a guess from the name
    if verify:
        ask.say(f"Verifying the credentials with {api} …")
        claims = _login(api, key, secret)
        conveyor = "conveyor_features" in claims  # a Conveyor server's token says so; ClearML's does not
        ask.say("Credentials verified.")
    web_default, files_default = default_hosts(api, conveyor)
    web_default = pasted.get("web_server", web_default).rstrip("/")
    files_default = pasted.get("files_server", files_default).rstrip("/")

    def question(given: str | None, text: str, default: str = "", secret: bool = False) -> str:
        return given or (ask.ask(text, default, secret) if interactive else default)

    web = _url(question(answers.web_host, "Web UI host", web_default), "Web UI host")
    files = _url(question(answers.files_host, "Files server host", files_default), "Files server host")
    git_user = question(answers.git_user, "Git user for cloning over https (empty: use SSH keys)")
    git_pass = question(answers.git_pass, "Git password or token", secret=True) if git_user else ""
    extra_index = question(answers.extra_index_url,
                           "Extra index URL for Python packages (pip --extra-index-url; empty: none)")
    agent: dict[str, object] = {}
    if git_user:
        agent["git_user"] = git_user
    if git_pass:
        agent["git_pass"] = git_pass
    if extra_index:
        agent["package_manager"] = {"extra_index_url": [_url(extra_index, "Extra index URL")]}
    if not write_api_section(target, api, web, files, key, secret, agent=agent or None):
        raise InitError(f"{display_path(target)} was created meanwhile and is left as it is — run `conveyor init` "
                        "again after removing it")
    ask.say(f"Wrote {display_path(target)}; `conveyor config` shows the settings in force.")
    return 0
