"""Starting a server process: open and migrate the store, first-start credentials, then serve with uvicorn."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select, text

from conveyor.config import Config, write_api_section
from conveyor.server.auth import Authenticator, signing_key
from conveyor.server.data_dir import secure
from conveyor.server.model.queues import ensure_default_queue
from conveyor.server.model.users import create_credentials, ensure_user
from conveyor.server.state import ServerSettings, ServerState
from conveyor.server.store import Store, StoreError
from conveyor.server.store import schema as s
from conveyor.server.store.database import sqlite_url

log = logging.getLogger("conveyor.server")


@dataclass
class ServerOptions:
    host: str
    port: int
    db: str
    data_dir: Path
    files_dir: Path  # what the files server under /files stores (artifacts)
    client_config: Path  # where first-start credentials are written, if that file does not exist


def options_from(cfg: Config, *, host: str | None = None, port: int | None = None, db: str | None = None,
                 data_dir: str | None = None, client_config: str | None = None) -> ServerOptions:
    data = Path(data_dir or cfg.get("conveyor.server.data_dir")).expanduser()
    return ServerOptions(
        host=host or cfg.get("conveyor.server.host"),
        port=int(port or cfg.get("conveyor.server.port")),
        db=db or cfg.get("conveyor.server.db") or sqlite_url(data),
        data_dir=data,
        files_dir=Path(cfg.get("conveyor.server.files_dir") or data / "files").expanduser(),
        client_config=Path(client_config or "~/clearml.conf").expanduser(),
    )


def settings_from(cfg: Config) -> ServerSettings:
    return ServerSettings(
        worker_timeout_sec=int(cfg.get("conveyor.server.worker_timeout_sec")),
        long_poll_max_sec=float(cfg.get("conveyor.server.long_poll_max_sec")),
        worker_stats_history=int(cfg.get("conveyor.server.worker_stats_history")),
        worker_stats_raw_sec=float(cfg.get("conveyor.server.worker_stats_raw_sec")),
        worker_stats_keep_days=float(cfg.get("conveyor.server.worker_stats_keep_days")),
        queue_metrics_sample_sec=float(cfg.get("conveyor.server.queue_metrics_sample_sec")),
        token_ttl_sec=int(cfg.get("conveyor.server.token_ttl_sec")),
        task_update_timeout_sec=int(cfg.get("conveyor.server.task_update_timeout_sec")),
        reap_interval_sec=float(cfg.get("conveyor.server.reap_interval_sec")),
        unstarted_requeue_sec=float(cfg.get("conveyor.server.unstarted_requeue_sec")),
        retry_elsewhere_sec=float(cfg.get("conveyor.server.retry_elsewhere_sec")),
        max_request_body_mb=float(cfg.get("conveyor.server.max_request_body_mb")),
        max_json_depth=int(cfg.get("conveyor.server.max_json_depth")),
        default_page_size=int(cfg.get("conveyor.server.default_page_size")),
        max_page_size=int(cfg.get("conveyor.server.max_page_size")),
        name_filter_timeout_sec=float(cfg.get("conveyor.server.name_filter_timeout_sec")),
        metrics_max_queues=int(cfg.get("conveyor.server.metrics_max_queues")),
    )


FIRST_START_CREDENTIALS = "first-start-credentials"  # where the secret goes when no terminal or clearml.conf takes it


def bootstrap(store: Store, opts: ServerOptions, out=sys.stdout) -> None:  # noqa: ANN001
    """Migrate; on the very first start create a user, credentials and the default queue."""
    store.migrate()
    created: tuple[str, str] | None = None
    with store.write() as conn:
        if store.dialect == "postgresql":  # several servers may start together on one database
            conn.execute(text("SELECT pg_advisory_xact_lock(7405121)"))
        user = ensure_user(conn)
        if conn.execute(select(s.credentials.c.access_key).limit(1)).first() is None:
            created = create_credentials(conn, user, "created at first start")
        ensure_default_queue(conn, user)
    if created is None:
        return
    access_key, secret_key = created
    base = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '::') else opts.host}:{opts.port}"
    written = write_api_section(opts.client_config, base, base, f"{base}/files", access_key, secret_key)
    # The secret goes to a terminal only: a server's output often ends up in a log file others can read.
    to_terminal = hasattr(out, "isatty") and out.isatty()
    print("First start: created API credentials (the secret is stored on the server only as a hash):", file=out)
    print(f"  access_key: {access_key}", file=out)
    if to_terminal:
        print(f"  secret_key: {secret_key}   (shown only this once)", file=out)
    if written:
        print(f"Wrote {opts.client_config} (mode 0600) with them, so that conveyor, clearml and clearml-agent on "
              "this machine use them.", file=out)
    else:
        where = ""
        if not to_terminal:
            kept = opts.data_dir / FIRST_START_CREDENTIALS
            kept.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"access_key: {access_key}\nsecret_key: {secret_key}\n")
            where = f" (the secret is in {kept}, mode 0600: delete it once copied)"
        print(f"{opts.client_config} already exists and was left as it is: put these credentials in its "
              f"api.credentials section to use them{where}.", file=out)
    out.flush()


def build_state(cfg: Config, opts: ServerOptions) -> ServerState:
    secure(opts.data_dir, opts.files_dir, opts.db)  # before SQLite creates a file with the umask's mode
    store = Store(opts.db)
    bootstrap(store, opts)
    settings = settings_from(cfg)
    auth = Authenticator(store, signing_key(store), settings.token_ttl_sec)
    return ServerState(store, auth, settings)


def _say(line: str, stream: TextIO) -> None:
    """The command's own output (what `conveyor server` tells its user), as opposed to the server's log."""
    stream.write(line + "\n")
    stream.flush()


def serve(cfg: Config, opts: ServerOptions) -> int:
    import uvicorn

    from conveyor.server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        state = build_state(cfg, opts)
    except StoreError as exc:
        _say(f"conveyor server: {exc}", sys.stderr)
        return 2
    app = create_app(state, files_dir=opts.files_dir)
    _say(f"Conveyor server on http://{opts.host}:{opts.port} (database: {state.store.safe_url})", sys.stdout)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", access_log=False,
                            timeout_keep_alive=75, backlog=2048)
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.signals.close()  # pending long-polls answer at once instead of holding the shutdown for 30 s
            super().handle_exit(sig, frame)

    server = Server(config)
    try:
        server.run()
    except OSError as exc:
        _say(f"conveyor server: cannot listen on {opts.host}:{opts.port}: {exc.strerror}", sys.stderr)
        return 2
    finally:
        state.store.dispose()
    return 0 if server.started else 2
