"""Server benchmark: enqueue+pop pairs per second (1, 8 and 32 clients), long-poll wake-up latency, log ingestion
(log_ingestion.py) and the task list on a big database (task_listing.py).

    python bench/server.py [--db sqlite|postgresql|both] [--pairs 2000] [--samples 100] [--only pairs|logs|tasks]
                           [--shippers 16] [--log-seconds 10] [--big-tasks 1000000] [--ref-tasks 10000]
                           [--pg-synchronous-commit on|off]

Each figure is printed with its ratio to a reference measured in the same run:
- pairs/s against the same clients doing two `debug.ping` calls per pair (the HTTP floor: what the server's
  transport alone allows on this machine), and against the issue's target (1,000 pairs/s on SQLite with 8 clients);
- wake-up latency against the reference agent's pickup, which polls every 5 s (mean wait 2.5 s), and the target
  (p50 under 10 ms); on PostgreSQL also across two server processes (enqueued through one, waited on the other);
- log lines/s against the same shippers sending the same bodies to `debug.ping`; task list latencies on the big
  database against the same queries on a small one.
Clients run in separate processes so that the client side is not one GIL; they share the machine's cores with the
server, as agents on a small box would.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx  # noqa: E402
import orjson  # noqa: E402

from conftest import ServerProcess, pg_database  # noqa: E402  (the same server launcher the tests use)


class LeanClient:
    """A keep-alive load generator (http.client + orjson), so that the figures measure the server rather than the
    client library: it costs a third of the CPU of an httpx call, and clients share the machine with the server."""

    def __init__(self, url: str, token: str):
        host, port = url.split("//", 1)[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port))
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, endpoint: str, body: dict) -> dict:
        return self._post(endpoint, orjson.dumps(body), self.headers)

    def post_lines(self, endpoint: str, lines: bytes) -> dict:
        """A JSON-lines body, as the agent sends `events.add_batch`."""
        return self._post(endpoint, lines, {**self.headers, "Content-Type": "application/json-lines"})

    def _post(self, endpoint: str, body: bytes, headers: dict) -> dict:
        self.conn.request("POST", f"/v2.31/{endpoint}", body, headers)
        response = self.conn.getresponse()
        payload = orjson.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{endpoint}: {payload['meta']['result_msg']}")
        return payload["data"]


def _worker(url: str, token: str, queue: str, tasks: list[str], mode: str, start: mp.Event, out: mp.Queue) -> None:
    client = LeanClient(url, token)
    client.call("debug.ping", {})
    start.wait()
    t0 = time.perf_counter()
    popped = 0
    for task in tasks:
        if mode == "ping":
            client.call("debug.ping", {})
            client.call("debug.ping", {})
            popped += 1
            continue
        client.call("tasks.enqueue", {"task": task, "queue": queue})
        if client.call("queues.get_next_task", {"queue": queue}).get("entry"):
            popped += 1
    out.put((time.perf_counter() - t0, popped))


def pairs_per_second(server: ServerProcess, clients: int, pairs: int, mode: str) -> tuple[float, int]:
    admin = server.client()
    key, secret = server.credentials()
    token = httpx.get(f"{server.url}/auth.login", auth=(key, secret)).json()["data"]["token"]
    queue = admin.call("queues.create", {"name": f"bench-{secrets.token_hex(3)}"})["id"]
    per_client = pairs // clients
    jobs = []
    for _ in range(clients):
        tasks = [] if mode == "ping" else [
            admin.call("tasks.create", {"name": "bench", "type": "training"})["id"] for _ in range(per_client)]
        jobs.append(tasks or [""] * per_client)
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_worker, args=(server.url, token, queue, tasks, mode, start, out))
             for tasks in jobs]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every client connect and log in before the clock starts
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    popped = sum(r[1] for r in results)
    # Tasks popped by one client may have been enqueued by another; whatever is left is still queued.
    left = len(admin.call("queues.get_by_id", {"queue": queue})["queue"]["entries"])
    return (per_client * clients) / elapsed, popped + left - per_client * clients if mode != "ping" else 0


def wakeup_latency(server: ServerProcess, samples: int, producer_server: ServerProcess | None = None) -> list[float]:
    """Enqueue → the long-polling waiter holds the entry. With `producer_server`, the enqueue goes through that other
    server process (on the same PostgreSQL database) and the wake-up crosses processes by LISTEN/NOTIFY."""
    waiter, producer = server.client(), (producer_server or server).client()
    queue = producer.call("queues.create", {"name": f"wake-{secrets.token_hex(3)}"})["id"]
    tasks = [producer.call("tasks.create", {"name": "wake", "type": "training"})["id"] for _ in range(samples)]
    latencies: list[float] = []
    got = threading.Event()
    sent_at = [0.0]

    def wait_loop() -> None:
        for _ in range(samples):
            while True:
                answer = waiter.call("queues.get_next_task", {"queue": queue, "wait": 10}, timeout=20)
                if answer.get("entry"):
                    latencies.append(time.perf_counter() - sent_at[0])
                    got.set()
                    break

    thread = threading.Thread(target=wait_loop)
    thread.start()
    for task in tasks:
        time.sleep(0.05 + secrets.randbelow(50) / 1000)  # the waiter is parked in its long-poll by now
        got.clear()
        sent_at[0] = time.perf_counter()
        producer.call("tasks.enqueue", {"task": task, "queue": queue})
        got.wait(15)
    thread.join()
    return latencies


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


@contextlib.contextmanager
def database(db_name: str) -> Iterator[str | None]:
    """A fresh PostgreSQL database (None for SQLite), with the durability --pg-synchronous-commit asks for."""
    if db_name != "postgresql":
        yield None
        return
    with pg_database() as url:
        if SYNCHRONOUS_COMMIT != "on":
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET synchronous_commit = {SYNCHRONOUS_COMMIT}")
        yield url


def label(db_name: str) -> str:
    return f"{db_name}, synchronous_commit={SYNCHRONOUS_COMMIT}" if db_name == "postgresql" else db_name


def run(db_name: str, pairs: int, samples: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        db = stack.enter_context(database(db_name))
        server = ServerProcess(Path(tmp) / "home", db=db).start()
        stack.callback(server.stop)
        print(f"\n== {label(db_name)} ==")
        for clients in (1, 8, 32):
            rates, floors = [], []
            for _ in range(repeats):
                rate, lost = pairs_per_second(server, clients, pairs, "pairs")
                assert lost == 0, f"{lost} tasks unaccounted for"
                rates.append(rate)
                floors.append(pairs_per_second(server, clients, pairs, "ping")[0])
            med, floor = statistics.median(rates), statistics.median(floors)
            line = (f"enqueue+pop pairs/s, {clients} client(s): median {med:,.0f} (min {min(rates):,.0f}, "
                    f"max {max(rates):,.0f}, {repeats} runs of {pairs}); HTTP floor (2 pings/pair) {floor:,.0f}/s; "
                    f"ratio to floor {med / floor:.2f}")
            if clients == 8 and db_name == "sqlite":
                line += f"; ratio to target 1,000/s: {med / 1000:.2f}"
            print(line, flush=True)
        print_wakeup("long-poll wake-up latency", wakeup_latency(server, samples))
        if db is not None:
            other = second_server(server, Path(tmp) / "second", db)
            stack.callback(other.stop)
            print_wakeup("long-poll wake-up latency across two server processes (enqueue through one, wait on the "
                         "other)", wakeup_latency(other, samples, producer_server=server))


def second_server(first: ServerProcess, home: Path, db: str) -> ServerProcess:
    """Another server process on the same database; it shares the credentials the first one created."""
    other = ServerProcess(home, db=db)
    other.home.mkdir(parents=True)
    other.config_file.write_text(first.config_file.read_text())
    return other.start()


def print_wakeup(label: str, lat: list[float]) -> None:
    p50, p95 = pct(lat, 0.5) * 1000, pct(lat, 0.95) * 1000
    print(f"{label} over {len(lat)} enqueues: p50 {p50:.1f} ms, p95 {p95:.1f} ms, min {min(lat) * 1000:.1f} ms, "
          f"max {max(lat) * 1000:.1f} ms; reference agent mean pickup wait 2500 ms (5 s poll): {2500 / p50:.0f}x "
          f"faster; target p50 < 10 ms: {'met' if p50 < 10 else 'NOT met'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pairs", type=int, default=2000, help="enqueue+pop pairs per run")
    parser.add_argument("--samples", type=int, default=100, help="wake-ups to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run only this part (repeatable); default: all of " + ", ".join(PARTS))
    parser.add_argument("--shippers", type=int, default=16, help="log shipper processes")
    parser.add_argument("--log-batch", type=int, default=100, help="log events per events.add_batch call")
    parser.add_argument("--log-seconds", type=float, default=10.0, help="length of one log ingestion run")
    parser.add_argument("--big-tasks", type=int, default=1_000_000, help="tasks in the big task database")
    parser.add_argument("--ref-tasks", type=int, default=10_000, help="tasks in the reference task database")
    parser.add_argument("--calls", type=int, default=50, help="calls timed per task-list query kind")
    parser.add_argument("--pg-synchronous-commit", choices=["on", "off"], default="on",
                        help="PostgreSQL's durability for the pairs and logs parts: off shows what the commit's disk "
                             "flush costs (the README's 'Running in production' says what it trades)")
    args = parser.parse_args()
    global SYNCHRONOUS_COMMIT
    SYNCHRONOUS_COMMIT = args.pg_synchronous_commit
    parts = args.only or list(PARTS)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    for db in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        if "pairs" in parts:
            run(db, args.pairs, args.samples, args.repeats)
        if "logs" in parts:
            run_logs(db, args)
        if "tasks" in parts:
            import task_listing  # here: it imports this module

            task_listing.report(db, args.big_tasks, args.ref_tasks, args.calls)


PARTS = ("pairs", "logs", "tasks")
SYNCHRONOUS_COMMIT = "on"  # --pg-synchronous-commit


def run_logs(db_name: str, args: argparse.Namespace) -> None:
    import log_ingestion  # here: it imports this module

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        db = stack.enter_context(database(db_name))
        server = ServerProcess(Path(tmp) / "home", db=db).start(timeout=120)
        stack.callback(server.stop)
        print(f"\n== {label(db_name)}: log ingestion ==")
        log_ingestion.report(server, args.shippers, args.log_batch, args.log_seconds, args.repeats)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
