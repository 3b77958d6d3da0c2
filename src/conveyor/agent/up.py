"""`conveyor up`: start (or reuse) a local server in a child process, then run a daemon in this one."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import httpx

from conveyor.config import load_config

log = logging.getLogger(__name__)


def _serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/debug.ping", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def up(config_file: str | None, port: int | None, data_dir: str | None, db: str | None, queues: list[str],
       services_mode: int | None) -> int:
    from conveyor.agent.daemon import Daemon, DaemonOptions
    from conveyor.agent.session import agent_client

    # `up` has no --log-level: the daemon's lines (serving, running, ended) at INFO, as `conveyor daemon` shows them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = load_config(config_file)
    port = port or int(cfg.get("conveyor.server.port"))
    url = f"http://127.0.0.1:{port}"
    server = None
    if _serving(url):
        log.info("conveyor up: using the server already running at %s", url)
    else:
        cmd = [sys.executable, "-m", "conveyor"] + (["--config-file", config_file] if config_file else [])
        cmd += ["server", "--port", str(port)] + (["--data-dir", data_dir] if data_dir else []) + (
            ["--db", db] if db else [])
        # Its own session: the terminal's Ctrl-C drains the agent first; the server is stopped after it.
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _serving(url):
            if server.poll() is not None or time.monotonic() > deadline:
                log.error("conveyor up: the server did not start (see its message above)")
                return 2
            time.sleep(0.1)
    try:
        cfg = load_config(config_file)  # the server's first start may just have written the credentials
        if cfg.api_host.rstrip("/") != url:
            log.warning("conveyor up: the agent talks to %s (api.api_server), not to %s", cfg.api_host, url)
        opts = DaemonOptions(queues=queues, create_queue=True, services_mode=services_mode,
                             argv=["conveyor", "up", *sys.argv[2:]], launched_by="up")
        return Daemon(agent_client(cfg), cfg, opts).run()
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
