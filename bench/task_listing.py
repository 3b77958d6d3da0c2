"""The task list on a big database: `tasks.get_all` pages as the web UI asks them, and the server's memory.

A fresh database is filled with N tasks straight through the store (PostgreSQL: COPY; SQLite: one transaction of
executemany), with the documents and indexed columns the server itself writes (`documents.task_columns`), spread
over 50 projects, 5 users, every status and several types, tags and names. A real server is then started on it and
each query kind is timed over `calls` calls from one keep-alive client: the task list's body (app.js: its
`only_fields`, newest first, 50 a page) with the filters the page offers, and the projects page's `get_all_ex` with
`include_stats`. The reference is the same queries on a small database in the same run.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from server import LeanClient, pct
from sqlalchemy import create_engine

from conftest import ServerProcess, pg_database
from conveyor.server.codec import iso
from conveyor.server.model.tasks import new_task
from conveyor.server.store import schema as s
from conveyor.server.store import sql
from conveyor.server.store.database import Store, sqlite_url
from conveyor.server.store.documents import task_columns

PROJECTS, USERS, PAGE, DEEP_PAGE = 50, 5, 50, 100
KIND_BUDGET_SEC = 30.0  # past it (and 5 calls), a query kind is timed over the calls made so far
# What the task list asks (app.js `TASK_FIELDS`, `tasksState`) and the projects page (projects.js).
TASK_FIELDS = ["id", "name", "type", "project", "user", "status", "status_reason", "status_message", "last_update",
               "created", "last_worker", "execution.queue", "failure_class"]
STATUSES = {"completed": 55, "failed": 10, "stopped": 8, "created": 12, "queued": 3, "in_progress": 2,
            "published": 8, "closed": 2}
TYPES = {"training": 70, "testing": 10, "data_processing": 8, "inference": 6, "optimizer": 3, "controller": 3}
MODELS = ["resnet50", "bert-base", "vit-b16", "yolov8", "unet", "gpt2-small", "lstm", "xgboost", "efficientnet-b3"]
DATASETS = ["imagenet", "cifar10", "coco", "squad", "wikitext", "mnist", "ade20k", "criteo"]
TAGS = ["baseline", "sweep", "prod", "debug", "ablation", "best", "nightly"]
YEAR = 365 * 86400.0


def _weighted(rng: random.Random, weights: dict[str, int], count: int) -> list[str]:
    return rng.choices(list(weights), list(weights.values()), k=count)


def _documents(count: int, projects: list[str], users: list[str], seed: int = 14) -> Iterator[dict[str, Any]]:
    """`count` task documents of the shape `tasks.create` and a run give them, oldest first. (Random draws are made
    a column at a time and shared parts are shared: a million documents are generated in about a minute.)"""
    rng = random.Random(seed)
    template = new_task("template", "training", user=users[0], company="")
    statuses, types = _weighted(rng, STATUSES, count), _weighted(rng, TYPES, count)
    models, datasets = rng.choices(MODELS, k=count), rng.choices(DATASETS, k=count)
    owners, rates = rng.choices(users, k=count), rng.choices(["1e-3", "3e-4", "1e-4"], k=count)
    tag_sets = [[], [], ["baseline"], ["sweep"], ["prod", "best"], ["debug"], ["ablation", "sweep"], ["nightly"]]
    tags, rolls = rng.choices(tag_sets, k=count), [rng.random() for _ in range(count)]
    hyperparams = {"Args": {k: {"section": "Args", "name": k, "value": v, "type": "str"}
                            for k, v in (("lr", "3e-4"), ("batch_size", "64"), ("epochs", "90"))}}
    start = time.time() - YEAR
    for n in range(count):
        created = start + YEAR * n / count
        status, model, dataset, roll = statuses[n], models[n], datasets[n], rolls[n]
        ran = status not in ("created", "queued")
        ended = ran and status != "in_progress"
        created_at, last = iso(created), iso(created + (60 + roll * 36000 if ran else roll * 60))
        doc = {**template, "id": f"{rng.getrandbits(128):032x}", "status": status, "type": types[n],
               "name": f"{model}-{dataset} lr={rates[n]} #{n}", "project": projects[n % len(projects)],
               "user": owners[n], "created": created_at, "last_update": last, "last_change": last,
               "status_changed": last, "started": created_at if ran else None, "completed": last if ended else None,
               "last_worker": f"gpu-{n % 64:02d}:0" if ran else None, "tags": tags[n],
               "system_tags": ["archived"] if roll < 0.03 else ["hidden"] if roll < 0.035 else [],
               "last_iteration": n % 100_000 if ran else 0,
               "script": {"repository": f"git@git.internal:ml/{model}.git", "branch": "main",
                          "version_num": f"{rng.getrandbits(160):040x}", "entry_point": "train.py",
                          "working_dir": ".", "requirements": {"pip": "torch==2.3.1\nnumpy\n"}},
               "execution": {"parameters": {}, "artifacts": [], "model_labels": {},
                             "queue": projects[0] if status == "queued" else None},
               "hyperparams": hyperparams}
        if status == "completed":
            doc["last_metrics"] = {"m": {"v": {"metric": "loss", "variant": "val", "value": roll}}}
        yield doc


def populate(url: str, count: int, projects: list[str], users: list[str]) -> float:
    """Insert `count` tasks into the (migrated) database at `url`; returns the seconds it took."""
    store = Store(url)
    columns = [c.name for c in s.tasks.columns if c.name != "runner"]  # what insert_task writes
    t0 = time.perf_counter()
    rows = ({"id": doc["id"], **task_columns(doc)} for doc in _documents(count, projects, users))
    with store.write() as conn:
        raw: Any = conn.connection.dbapi_connection
        if store.dialect == "postgresql":
            with raw.cursor().copy(f"COPY {s.tasks.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        else:
            raw.execute("PRAGMA cache_size = -262144")  # 256 MiB: random ids make the primary key's inserts random
            raw.executemany(sql.statement("insert_task", "sqlite"), rows)
    store.dispose()
    if url.startswith("postgresql"):  # what autovacuum does after such a load: statistics, and the visibility map
        engine = create_engine(store.url, isolation_level="AUTOCOMMIT")  # that lets counts read indexes alone
        with engine.connect() as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {s.tasks.name}")
        engine.dispose()
    return time.perf_counter() - t0


def _queries(projects: list[str], count: int) -> dict[str, tuple[str, Any]]:
    """Query kind -> (endpoint, body or a function of the call number giving it)."""
    deep = min(DEEP_PAGE, count // PAGE // 2)  # a small reference database has fewer pages
    base = {"only_fields": TASK_FIELDS, "order_by": ["-created"], "page": 0, "page_size": PAGE}
    return {
        "all, newest first (the list's default)": ("tasks.get_all", base),
        f"all, page {DEEP_PAGE} (Next pressed {DEEP_PAGE} times)": ("tasks.get_all", {**base, "page": deep}),
        "all, by last update": ("tasks.get_all", {**base, "order_by": ["-last_update"]}),
        "status completed": ("tasks.get_all", {**base, "status": ["completed"]}),
        "status in progress (2%)": ("tasks.get_all", {**base, "status": ["in_progress"]}),
        "one project": ("tasks.get_all", lambda i: {**base, "project": [projects[i % len(projects)]]}),
        "one project, failed": ("tasks.get_all",
                                lambda i: {**base, "project": [projects[i % len(projects)]], "status": ["failed"]}),
        "name search 'resnet'": ("tasks.get_all", {**base, "name": "resnet"}),
        "name search, no match": ("tasks.get_all", {**base, "name": "transformer-xl"}),
        "projects page (get_all_ex, include_stats)": (
            "projects.get_all_ex", {"only_fields": ["id", "name", "created", "last_update"], "order_by": ["name"],
                                    "search_hidden": True, "include_stats": True}),
    }


def measure(db_name: str, count: int, calls: int) -> tuple[float, dict[str, list[float]], dict[str, int], int]:
    """Fill a fresh database with `count` tasks and time the UI's queries on it: returns the population's seconds,
    each query kind's latencies, how many of its calls were refused, and the server's RSS after them."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        db = stack.enter_context(pg_database()) if db_name == "postgresql" else None
        server = ServerProcess(Path(tmp) / "home", db=db).start(timeout=120)
        stack.callback(server.stop)
        admin = server.client()
        users = [admin.call("users.get_current_user", {})["user"]["id"]]
        users += [admin.call("users.create", {"name": f"user{n}"})["id"] for n in range(1, USERS)]
        projects = [admin.call("projects.create", {"name": f"project-{n:02d}"})["id"]
                    for n in range(PROJECTS)]
        server.stop()  # the store is filled with no server on it, as a restore would
        populated = populate(db or sqlite_url(server.home / ".conveyor"), count, projects, users)
        server.start(timeout=300)
        key, secret = server.credentials()
        token = httpx.get(f"{server.url}/auth.login", auth=(key, secret)).json()["data"]["token"]
        client = LeanClient(server.url, token)
        timings: dict[str, list[float]] = {}
        refused: dict[str, int] = {}
        for kind, (endpoint, body) in _queries(projects, count).items():
            budget = time.perf_counter() + KIND_BUDGET_SEC
            for i in range(calls):
                if i >= 5 and time.perf_counter() > budget:
                    break  # a slow kind is timed over fewer calls (the report says how many)
                t0 = time.perf_counter()
                try:
                    answer = client.call(endpoint, body(i) if callable(body) else body)
                except RuntimeError as exc:  # a name pattern that ran past name_filter_timeout_sec: a 400
                    if "too expensive" not in str(exc):
                        raise
                    refused[kind] = refused.get(kind, 0) + 1
                    answer = {}
                timings.setdefault(kind, []).append(time.perf_counter() - t0)
                assert answer.get("tasks") or answer.get("projects") or "no match" in kind or refused.get(kind), \
                    f"{kind}: empty answer"
        assert server.proc is not None
        rss = psutil.Process(server.proc.pid).memory_info().rss
    return populated, timings, refused, rss


def report(db_name: str, big: int, ref: int, calls: int) -> None:
    print(f"\n== {db_name}: task list on {big:,} tasks (reference: {ref:,} tasks, same run) ==", flush=True)
    ref_fill, ref_times, ref_refused, ref_rss = measure(db_name, ref, calls)
    fill, times, refused, rss = measure(db_name, big, calls)
    print(f"population: {fill:.1f} s ({big / fill:,.0f} tasks/s); reference {ref_fill:.1f} s", flush=True)
    for kind, values in times.items():
        refs = ref_times[kind]
        p50, p95, r50, r95 = (pct(v, q) * 1000 for v in (values, refs) for q in (0.5, 0.95))
        notes = [f"{refused[kind]} refused as too expensive"] if refused.get(kind) else []
        notes += [f"reference: {ref_refused[kind]} refused"] if ref_refused.get(kind) else []
        notes += ["SLOW (p50 > 100 ms)"] if p50 > 100 else []
        print(f"{kind}: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(values)} calls; reference p50 {r50:.1f} ms, "
              f"p95 {r95:.1f} ms; p50 ratio {p50 / r50:.1f}{''.join('; ' + n for n in notes)}")
    print(f"server RSS after the queries: {rss / 2**20:.0f} MiB; reference {ref_rss / 2**20:.0f} MiB", flush=True)
