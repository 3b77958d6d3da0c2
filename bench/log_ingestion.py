"""Log ingestion: shippers sending `events.add_batch` as the agent does, lines stored per second.

Each shipper is a process that sends, for a fixed time and as fast as the server answers, batches of log events in
the agent's form (`agent/logs.py`: JSON lines; type=log, task, level, worker, msg, timestamp and the client id the
server de-duplicates on) for a task of its own. Each event holds one line: the agent merges consecutive lines of one
level into one event, so one row per line is the case that costs the server most. The reference, measured in the same
run, is the HTTP floor: the same shippers sending a body of the same size to `debug.ping` (transport and JSON parsing,
nothing stored). After each run the server must hold every line it acknowledged (counted through
`events.get_task_log`).
"""

from __future__ import annotations

import multiprocessing as mp
import secrets
import statistics
import time
from typing import Any

import httpx
import orjson
from server import LeanClient

from conftest import ServerProcess  # the same server launcher the tests use

LINE = "epoch {e:3d} step {s:6d}  loss {l:.6f}  lr 3.0e-04  throughput 1843.2 samples/s  grad_norm 0.8731\n"


def _batch(task: str, worker: str, session: str, first: int, size: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [{"type": "log", "task": task, "level": "info", "worker": worker, "timestamp": now,
             "msg": LINE.format(e=n // 1000, s=n, l=1 / (n + 1)), "conveyor_id": f"{session}-{n}"}
            for n in range(first, first + size)]


def _shipper(url: str, token: str, task: str, batch: int, seconds: float, mode: str,
             start: Any, out: Any) -> None:
    client = LeanClient(url, token)
    client.call("debug.ping", {})
    worker, session = f"bench-{task[:6]}", secrets.token_hex(6)
    start.wait()
    deadline = time.perf_counter() + seconds
    sent = 0
    while time.perf_counter() < deadline:
        events = _batch(task, worker, session, sent, batch)
        if mode == "ping":  # the same bytes, parsed as one JSON document and stored nowhere
            client.call("debug.ping", {"requests": events})
        else:
            answer = client.post_lines("events.add_batch", b"\n".join(orjson.dumps(e) for e in events))
            if answer["added"] != batch:
                raise RuntimeError(f"the server added {answer['added']} of {batch} lines: {answer['errors_info']}")
        sent += batch
    out.put(sent)


def lines_per_second(server: ServerProcess, shippers: int, batch: int, seconds: float,
                     mode: str) -> tuple[float, int]:
    """Lines/s of `shippers` processes over `seconds`; returns it with the lines acknowledged but not stored."""
    admin = server.client()
    key, secret = server.credentials()
    token = httpx.get(f"{server.url}/auth.login", auth=(key, secret)).json()["data"]["token"]
    tasks = [admin.call("tasks.create", {"name": f"ingest-{n}", "type": "training"})["id"] for n in range(shippers)]
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_shipper, args=(server.url, token, task, batch, seconds, mode, start, out))
             for task in tasks]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every shipper connected before the clock starts
    t0 = time.perf_counter()
    start.set()
    sent = [out.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    if mode == "ping":
        return sum(sent) / elapsed, 0
    stored = sum(admin.call("events.get_task_log", {"task": task, "batch_size": 1})["total"] for task in tasks)
    return sum(sent) / elapsed, sum(sent) - stored


def report(server: ServerProcess, shippers: int, batch: int, seconds: float, repeats: int) -> None:
    rates, floors = [], []
    for _ in range(repeats):
        rate, missing = lines_per_second(server, shippers, batch, seconds, "lines")
        assert missing == 0, f"{missing} acknowledged lines were not stored"
        rates.append(rate)
        floors.append(lines_per_second(server, shippers, batch, seconds, "ping")[0])
    med, floor = statistics.median(rates), statistics.median(floors)
    print(f"log lines stored/s, {shippers} shippers, batches of {batch} one-line events: median {med:,.0f} "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {repeats} runs of {seconds:g} s; every line stored); "
          f"HTTP floor (same bodies to debug.ping) {floor:,.0f} lines/s (min {min(floors):,.0f}, "
          f"max {max(floors):,.0f}); ratio to floor {med / floor:.2f}", flush=True)
