"""`conveyor credentials create|list|revoke`: API keys (the server keeps only a hash of each secret)."""

from __future__ import annotations

import argparse

from conveyor.cli._output import local_time, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("credentials", help="create, list and revoke API credentials")
    cmds = p.add_subparsers(dest="credentials_command", metavar="ACTION", required=True)

    c = cmds.add_parser("create", help="create an access key and secret (the secret is shown only once)")
    c.add_argument("--label", default="", help="what the key is for, e.g. 'gpu-box agent'")
    c.add_argument("--user", metavar="NAME", help="whose key it is (admins only; default: yours)")
    c.add_argument("--json", action="store_true", help="print the new credentials as JSON")
    c.set_defaults(func=create)

    ls = cmds.add_parser("list", help="list access keys, active and revoked, with their state and owner "
                                      "(never secrets): an admin sees everyone's")
    ls.add_argument("--active", action="store_true", help="only the keys that can still log in")
    ls.add_argument("--all", action="store_true", help=argparse.SUPPRESS)  # revoked keys are listed by default now
    ls.add_argument("--json", action="store_true", help="print the server's data as JSON")
    ls.set_defaults(func=list_credentials)

    r = cmds.add_parser("revoke", help="revoke an access key: it can no longer log in")
    r.add_argument("access_key", metavar="ACCESS_KEY")
    r.add_argument("--force", action="store_true", help="also revoke the key this command logs in with")
    r.set_defaults(func=revoke)


def create(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of
    from conveyor.client.errors import ApiCallError
    from conveyor.client.task_builder import SpecError

    body = {"label": args.label, **({"user": args.user} if args.user else {})}
    try:
        creds = client_of(args).call("auth.create_credentials", body)["credentials"]
    except ApiCallError as exc:
        if exc.code == 403:
            raise SpecError(f"{exc.msg} — ask an admin, or leave out --user") from None
        if exc.code == 400 and "No user named" in exc.msg:
            raise SpecError(f"No user named {args.user!r} — `conveyor user list` shows the users") from None
        raise
    if args.json:
        print_json(creds)
        return 0
    print(f"access_key: {creds['access_key']}")
    print(f"secret_key: {creds['secret_key']}")
    print("Keep the secret now: the server stores only its hash and cannot show it again.")
    return 0


def list_credentials(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of, config_of

    # The server (as ClearML's) leaves revoked keys out unless asked; a user looking for a key wants to see them.
    data = client_of(args).call("auth.get_credentials", {"include_revoked": not args.active})
    if args.json:
        print_json(data)
        return 0
    mine = config_of(args).access_key
    rows = [(c["access_key"] + (" *" if c["access_key"] == mine else ""), c.get("user_name") or c.get("user") or "",
             c.get("label") or "", local_time(c.get("created")), local_time(c.get("last_used")),
             "revoked " + local_time(c["revoked"]) if c.get("revoked") else "active")
            for c in data.get("credentials") or []]
    print_table(("ACCESS KEY", "USER", "LABEL", "CREATED", "LAST USED", "STATE"), rows, empty="No credentials")
    if any(c["access_key"] == mine for c in data.get("credentials") or []):
        print("(* the key this command uses)")
    return 0


def revoke(args: argparse.Namespace) -> int:
    from conveyor.cli.common import client_of, config_of
    from conveyor.client.errors import ApiCallError
    from conveyor.client.task_builder import SpecError

    if args.access_key == config_of(args).access_key and not args.force:
        raise SpecError(f"{args.access_key} is the key this command logs in with — revoking it locks this "
                        "configuration out; create another first (`conveyor credentials create`) or use --force")
    try:
        client_of(args).call("auth.revoke_credentials", {"access_key": args.access_key})
    except ApiCallError as exc:
        if exc.code == 400:
            raise SpecError(f"No active credentials with access key {args.access_key} — "
                            "`conveyor credentials list` shows each key's state") from None
        raise
    print(f"Revoked {args.access_key}")
    return 0
