"""The calls behind the Orchestration page: workers' stats over a range (raw and down-sampled), their activity,
queue metrics, and the queue list's display names, hidden queues and entry limits. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from _api import module_server
from conftest import ServerProcess, pg_database
from conveyor.client import ApiCallError, ApiClient
from conveyor.server.model import queue_metrics, queues, worker_stats
from conveyor.server.store import Store
from conveyor.server.store import schema as s
from conveyor.server.store.database import sqlite_url

HOUR, DAY = 3600, 86400


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CONVEYOR__SERVER__QUEUE_METRICS_SAMPLE_SEC": "1"}
    with module_server(request.param, tmp_path_factory.mktemp(f"orch-{request.param}"), extra_env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[ApiClient]:
    with srv.client() as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def report(api: ApiClient, worker: str, at: float, task: str | None = None, **stats: Any) -> None:
    api.call("workers.status_report", {"worker": worker, "timestamp": int(at * 1000), "machine_stats": stats,
                                       **({"task": task} if task else {})})


def stats_of(api: ApiClient, worker: str, start: float, end: float, interval: int, *keys: str,
             split: bool = False) -> dict[tuple[str, str | None], dict[str, Any]]:
    """(metric, variant) -> {dates, avg, min, max} of one worker."""
    items = [{"key": k, "category": c} for k in keys for c in ("avg", "min", "max")]
    answer = api.call("workers.get_stats", {"worker_ids": [worker], "from_date": start, "to_date": end,
                                            "interval": interval, "items": items, "split_by_variant": split})
    out: dict[tuple[str, str | None], dict[str, Any]] = {}
    for entry in answer["workers"]:
        assert entry["worker"] == worker
        for metric in entry["metrics"]:
            values = {s["aggregation"]: s["values"] for s in metric["stats"]}
            out[(metric["metric"], metric.get("variant"))] = {"dates": metric["dates"], **values}
    return out


def test_a_workers_stats_over_a_range_give_min_max_and_avg_per_interval(api: ApiClient) -> None:
    worker = unique("gpu-box")
    start = (time.time() // 60 - 3) * 60  # three whole minutes ago: two reports in one minute, one in the next
    report(api, worker, start + 10, cpu_usage=[10.0, 30.0], memory_used=1000, gpu_usage=[90.0])
    report(api, worker, start + 40, cpu_usage=[50.0, 70.0], memory_used=3000, gpu_usage=[50.0])
    report(api, worker, start + 70, cpu_usage=[20.0, 20.0], memory_used=2000)

    together = stats_of(api, worker, start, start + 119, 60, "cpu_usage", "memory_used", "gpu_usage")
    cpu = together[("cpu_usage", None)]
    assert cpu["dates"] == [start, start + 60]
    assert cpu["min"] == [10.0, 20.0] and cpu["max"] == [70.0, 20.0] and cpu["avg"] == [40.0, 20.0]
    assert together[("memory_used", None)]["avg"] == [2000.0, 2000.0]
    assert together[("gpu_usage", None)]["dates"] == [start]  # no GPU in the second minute: no point there

    per_core = stats_of(api, worker, start, start + 119, 60, "cpu_usage", "memory_used", split=True)
    assert per_core[("cpu_usage", "0")]["avg"] == [30.0, 20.0]
    assert per_core[("cpu_usage", "1")]["max"] == [70.0, 20.0]
    assert per_core[("memory_used", "total")]["min"] == [1000.0, 2000.0]

    keys = {c["name"]: c["metric_keys"] for c in api.call("workers.get_metric_keys",
                                                           {"worker_ids": [worker]})["categories"]}
    assert keys == {"cpu": ["cpu_usage"], "gpu": ["gpu_usage"], "memory": ["memory_used"]}


def test_bad_stats_ranges_are_refused_with_what_to_change(api: ApiClient) -> None:
    now = time.time()
    with pytest.raises(ApiCallError) as info:
        api.call("workers.get_stats", {"from_date": now - 7 * DAY, "to_date": now, "interval": 1,
                                       "items": [{"key": "cpu_usage", "category": "avg"}]})
    assert info.value.code == 400 and "longer interval" in info.value.msg
    with pytest.raises(ApiCallError) as info:
        api.call("workers.get_stats", {"from_date": now - 60, "to_date": now, "interval": 10,
                                       "items": [{"key": "cpu_usage", "category": "median"}]})
    assert info.value.code == 400 and "category" in info.value.msg


def test_old_reports_are_down_sampled_and_still_answer_a_week(api: ApiClient) -> None:
    worker = unique("old-box")
    bucket = (time.time() - 3 * DAY) // 600 * 600  # a 10-minute bucket three days ago
    for offset, cpu in ((5, 10.0), (65, 40.0), (300, 70.0)):
        report(api, worker, bucket + offset, task=None, cpu_usage=[cpu])
    report(api, worker, time.time(), cpu_usage=[99.0])  # a fresh one stays as sent
    now = time.time()
    week = {}
    deadline = time.time() + 20
    while time.time() < deadline:  # the server folds reports past its raw window on its next sweep
        week = stats_of(api, worker, now - 7 * DAY, now, 60, "cpu_usage")
        if len(week.get(("cpu_usage", None), {}).get("dates", [])) == 2:
            break
        time.sleep(0.5)
    cpu = week[("cpu_usage", None)]
    # The three old reports became one 10-minute point (a minute-wide interval cannot see inside it any more) with
    # their min, max and mean; the fresh report is its own point.
    assert len(cpu["dates"]) == 2 and cpu["dates"][0] == int(bucket - (bucket - (now - 7 * DAY)) % 60)
    assert (cpu["min"][0], cpu["max"][0], cpu["avg"][0]) == (10.0, 70.0, 40.0)
    assert cpu["max"][1] == 99.0

    hourly = stats_of(api, worker, now - 7 * DAY, now, HOUR, "cpu_usage")[("cpu_usage", None)]
    assert (hourly["min"][0], hourly["max"][0]) == (10.0, 70.0)

    activity = api.call("workers.get_activity_report", {"from_date": bucket - 600, "to_date": bucket + 1200,
                                                        "interval": 600})
    assert activity["total"]["dates"] == [int(bucket - 600), int(bucket), int(bucket + 600), int(bucket + 1200)]
    assert activity["total"]["counts"][1] >= 1 and activity["total"]["counts"][0] == 0
    assert activity["active"]["counts"] == [0, 0, 0, 0]


def test_activity_report_counts_workers_and_those_running_a_task(api: ApiClient) -> None:
    busy, idle = unique("busy"), unique("idle")
    start = time.time() // 60 * 60 - 120
    task = api.call("tasks.create", {"name": unique("t"), "type": "training"})["id"]
    report(api, busy, start + 5, task=task, cpu_usage=[1.0])
    report(api, idle, start + 6, cpu_usage=[1.0])
    report(api, idle, start + 65, cpu_usage=[1.0])
    answer = api.call("workers.get_activity_report", {"from_date": start, "to_date": start + 119, "interval": 60})
    assert answer["total"]["dates"] == [start, start + 60] == answer["active"]["dates"]
    # Other tests' workers may report in these minutes too: count at least ours.
    assert answer["total"]["counts"][0] >= 2 and answer["active"]["counts"][0] >= 1


def enqueue(api: ApiClient, queue: str) -> str:
    task = api.call("tasks.create", {"name": unique("t"), "type": "training"})["id"]
    api.call("tasks.enqueue", {"task": task, "queue": queue})
    return task


def test_queue_metrics_show_length_and_waiting_time_over_time(api: ApiClient) -> None:
    queue = api.call("queues.create", {"name": unique("metrics")})["id"]
    start = time.time()
    enqueue(api, queue)
    enqueue(api, queue)
    # The server's loop samples every second (the test server's setting): wait for one of its samples, however
    # busy the machine; the samples the assertions count are taken with `refresh`, when the test says.
    deadline = time.time() + 30
    while not api.call("queues.get_queue_metrics", {"from_date": start - 1, "to_date": time.time() + 1,
                                                    "interval": 1, "queue_ids": [queue]})["queues"][0]["dates"]:
        assert time.time() < deadline, "the server's loop took no queue sample in 30 s"
        time.sleep(0.2)
    time.sleep(max(0.0, start + 1.2 - time.time()))  # both have waited over a second
    api.call("queues.get_queue_metrics", {"queue_ids": [queue], "refresh": True})
    assert api.call("queues.get_next_task", {"queue": queue})["entry"]
    api.call("queues.get_next_task", {"queue": queue})
    time.sleep(1.1)  # the next sample falls in another one-second slot
    answer = api.call("queues.get_queue_metrics", {"from_date": start - 1, "to_date": time.time() + 1, "interval": 1,
                                                   "queue_ids": [queue], "refresh": True})
    [series] = answer["queues"]
    assert series["queue"] == queue
    assert len(series["dates"]) == len(series["avg_waiting_times"]) == len(series["queue_lengths"]) >= 2
    assert series["dates"] == sorted(series["dates"])
    assert 2 in series["queue_lengths"] and series["queue_lengths"][-1] == 0
    assert max(series["avg_waiting_times"]) >= 1.0  # they waited two seconds before the pops
    assert series["avg_waiting_times"][-1] == 0

    coarse = api.call("queues.get_queue_metrics", {"from_date": start - 1, "to_date": time.time(), "interval": 60,
                                                   "queue_ids": [queue]})["queues"][0]
    # One point per minute: the sample with the longest wait, and the length then.
    assert len(coarse["dates"]) <= 2 and max(coarse["queue_lengths"]) == 2
    every = api.call("queues.get_queue_metrics", {"from_date": start - 1, "to_date": time.time(), "interval": 60})
    assert [s["queue"] for s in every["queues"]] == ["all"]

    with pytest.raises(ApiCallError) as info:
        api.call("queues.get_queue_metrics", {"from_date": start, "to_date": time.time(), "interval": 60,
                                              "queue_ids": ["0" * 32]})
    assert info.value.code == 400 and info.value.subcode == 701


def listed(api: ApiClient, **body: Any) -> dict[str, dict[str, Any]]:
    return {q["id"]: q for q in api.call("queues.get_all_ex", body)["queues"]}


def test_queues_have_display_names_and_hidden_ones_are_left_out(api: ApiClient) -> None:
    shown = api.call("queues.create", {"name": unique("gpu-a100"), "display_name": "A100 (8 GPUs)"})["id"]
    hidden = api.call("queues.create", {"name": unique("glue-internal"), "system_tags": ["hidden"]})["id"]
    queues = listed(api)
    assert queues[shown]["display_name"] == "A100 (8 GPUs)"
    assert hidden not in queues
    assert hidden in listed(api, search_hidden=True)
    assert hidden in listed(api, id=[hidden])  # named by id, as the reference finds it
    assert api.call("queues.update", {"queue": shown, "display_name": "A100"})["updated"] == 1
    assert api.call("queues.get_by_id", {"queue": shown})["queue"]["display_name"] == "A100"


def test_a_full_queue_refuses_more_entries_with_a_clear_error(api: ApiClient) -> None:
    queue = api.call("queues.create", {"name": unique("small"), "max_entries": 2})["id"]
    enqueue(api, queue)
    enqueue(api, queue)
    extra = api.call("tasks.create", {"name": unique("t"), "type": "training"})["id"]
    with pytest.raises(ApiCallError) as info:
        api.call("tasks.enqueue", {"task": extra, "queue": queue})
    assert info.value.code == 400 and "full" in info.value.msg and "max_entries" in info.value.msg
    assert api.call("tasks.get_by_id", {"task": extra})["task"]["status"] == "created"  # left as it was
    with pytest.raises(ApiCallError):
        api.call("queues.add_task", {"task": extra, "queue": queue})
    assert len(api.call("queues.get_all_ex", {"id": [queue], "max_task_entries": 1})["queues"][0]["entries"]) == 1
    api.call("queues.update", {"queue": queue, "max_entries": 0})  # no limit
    api.call("tasks.enqueue", {"task": extra, "queue": queue})
    assert api.call("queues.get_num_entries", {"queue": queue})["num"] == 3


def test_a_worker_gives_back_what_it_pulled_even_when_the_queue_filled_meanwhile(api: ApiClient) -> None:
    """A daemon that pulled a task and cannot run it (draining, its GPU taken) puts it back at the front: the task
    held a place in the queue, so the limit reached by others meanwhile does not leave it queued with no entry."""
    queue = api.call("queues.create", {"name": unique("giveback"), "max_entries": 1})["id"]
    pulled = enqueue(api, queue)
    assert api.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == pulled
    waiting = enqueue(api, queue)  # the queue is full again
    api.call("queues.add_task", {"queue": queue, "task": pulled})
    api.call("queues.move_task_to_front", {"queue": queue, "task": pulled})
    entries = api.call("queues.get_by_id", {"queue": queue})["queue"]["entries"]
    assert [e["task"] for e in entries] == [pulled, waiting]
    with pytest.raises(ApiCallError) as info:  # a new task still finds the queue full
        enqueue(api, queue)
    assert "full" in info.value.msg


# --- the history's storage, in-process on either database -----------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_database()) if request.param == "postgresql" else sqlite_url(tmp_path)
        opened = Store(url)
        opened.migrate()
        stack.callback(opened.dispose)
        yield opened


def test_a_week_of_reports_from_many_workers_stays_small(store: Store) -> None:
    now = time.time()
    reports = [{"worker": f"w{w}", "timestamp": now - age, "task": "t" if age % 1200 < 600 else None,
                "stats": json.dumps({"cpu_usage": [float(w), 50.0], "memory_used": 1000.0})}
               for w in range(3) for age in range(60, 7 * DAY, 60)]  # one a minute for a week, three workers
    with store.write() as conn:
        conn.execute(s.worker_stats.insert(), reports)
        folded = worker_stats.compact(conn, before=now - HOUR, keep_per_worker=1000, now=now, keep_days=8)
    with store.read() as conn:
        raw = conn.execute(select(func.count()).select_from(s.worker_stats)).scalar()
        kept = dict(conn.execute(select(s.worker_stats_rollup.c.resolution, func.count())
                                 .group_by(s.worker_stats_rollup.c.resolution)).all())
        week = list(worker_stats.samples(conn, now - 7 * DAY, now, ["w2"], resolution=600))
    assert raw == 3 * 60 and folded == len(reports) - raw  # the last hour stays as sent
    # A day of per-minute buckets and a week of 10-minute ones: about a quarter of the reports.
    assert kept[60] <= 3 * 1440 and kept[600] <= 3 * 1010 and sum(kept.values()) < len(reports) / 3
    # A week of one worker reads ~1000 buckets and the last hour's reports, not 10080 rows.
    assert len(week) < 1100
    folded_cpu = [x.stats["cpu_usage"]["0"] for x in week if len(x.stats["cpu_usage"]["0"]) == 4 and x.stats[
        "cpu_usage"]["0"][3] == 10]
    assert folded_cpu and all(summary == [2.0, 2.0, 20.0, 10] for summary in folded_cpu)
    assert any(x.active for x in week) and not all(x.active for x in week)


class _BucketReads:
    """A connection that counts the stored buckets (rows of worker_stats_rollup with their stats) it reads."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.buckets = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = self.conn.execute(*args, **kwargs)
        if not result.returns_rows:
            return result
        rows = result.all()
        self.buckets += sum(1 for r in rows if "bucket" in r._fields and "stats" in r._fields)
        return _Rows(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class _Rows(list):  # type: ignore[type-arg]
    def all(self) -> list:  # type: ignore[type-arg]
        return list(self)


def test_a_late_report_folds_into_its_own_buckets_only(store: Store) -> None:
    """A report that arrives late (an agent back after an outage sends its timestamp from days ago) is folded into
    the buckets it belongs to: the fold reads and locks those, not every bucket of the workers between its time
    and the others'."""
    now = time.time()
    week = [{"worker": f"w{w}", "timestamp": now - age, "task": None, "stats": json.dumps({"cpu_usage": 1.0})}
            for w in range(2) for age in range(2 * HOUR, 7 * DAY, 60)]
    with store.write() as conn:
        conn.execute(s.worker_stats.insert(), week)
        worker_stats.compact(conn, before=now - HOUR, keep_per_worker=100_000, now=now, keep_days=8)
        conn.execute(s.worker_stats.insert(), [
            {"worker": "w0", "timestamp": now - 6 * DAY + 30, "task": None, "stats": json.dumps({"cpu_usage": 5.0})},
            {"worker": "w1", "timestamp": now - 2 * HOUR + 30, "task": None, "stats": json.dumps({"cpu_usage": 5.0})}])
        counted = _BucketReads(conn)
        assert worker_stats.compact(counted, before=now - HOUR, keep_per_worker=100_000, now=now, keep_days=8) == 2
    assert counted.buckets <= 3, counted.buckets  # w0's 10-minute bucket, w1's minute and 10-minute ones
    with store.read() as conn:
        old = [x for x in worker_stats.samples(conn, now - 6 * DAY - 600, now - 6 * DAY + 600, ["w0"], resolution=600)
               if x.stats["cpu_usage"]["total"][1] == 5.0]
    assert len(old) == 1 and old[0].stats["cpu_usage"]["total"][3] == 11.0


def test_queue_samples_fold_into_slots_keeping_the_longest_wait(store: Store) -> None:
    t0 = (time.time() - DAY) // 600 * 600
    with store.write() as conn:
        queue = queues.create(conn, "q", user="u", company="", tags=[], system_tags=[])
        conn.execute(s.queue_entries.insert(), [{"queue": queue, "task": f"t{i}", "added": t0, "position": float(i)}
                                                for i in range(3)])
        for at in (t0 + 100, t0 + 200, t0 + 205):  # the last lands in the slot of the one before: kept once
            queue_metrics.sample(conn, at, 10)
        raw = list(queue_metrics.series(conn, t0, t0 + 600, 1, [queue])[0].points.items())
        assert raw == [(int(t0 + 100), (100.0, 3)), (int(t0 + 200), (200.0, 3))]
        assert queue_metrics.compact(conn, before=time.time() - HOUR, now=time.time(), keep_days=8) == 2
        [series] = queue_metrics.series(conn, t0, t0 + 600, 60, [queue])
    assert series.answer() == {"queue": queue, "dates": [int(t0)], "avg_waiting_times": [200.0],
                               "queue_lengths": [3]}


# --- the answers parse with the SDK's own response classes and schemas -----------------------------------------------
def assert_sdk_parses(answers: list[tuple[str, dict[str, Any]]]) -> None:
    """Each (endpoint, answer) as the SDK reads it (`Response.from_dict`) and against its JSON schema."""
    import importlib

    import jsonschema

    classes: dict[str, Any] = {}
    for service in ("events", "projects", "queues", "workers"):
        module = importlib.import_module(f"clearml.backend_api.services.v2_23.{service}")
        for request, response in module.response_mapping.items():
            classes[f"{request._service}.{request._action}"] = response
    problems = []
    for endpoint, data in answers:
        response = classes[endpoint]
        try:
            response.from_dict(data)
        except Exception as exc:  # noqa: BLE001 - every kind of refusal is a finding
            problems.append(f"{endpoint}: the SDK cannot parse it: {exc}")
        try:
            jsonschema.validate(data, response._schema)
        except jsonschema.ValidationError as exc:
            problems.append(f"{endpoint}: {exc.message} at {'/'.join(map(str, exc.absolute_path))}")
        except jsonschema.exceptions.SchemaError:
            pass
        except Exception as exc:  # noqa: BLE001
            if "PointerToNowhere" not in type(exc).__name__ + str(exc):  # the SDK's schema has a dangling $ref
                raise
    assert problems == []


def test_orchestration_answers_parse_with_sdk_schemas(api: ApiClient) -> None:
    worker = unique("schema-box")
    now = time.time()
    report(api, worker, now - 5, cpu_usage=[5.0], memory_used=10.0)
    queue = api.call("queues.create", {"name": unique("schema"), "display_name": "Schema"})["id"]
    enqueue(api, queue)
    body = {"from_date": now - 60, "to_date": now, "interval": 10}
    items = [{"key": "cpu_usage", "category": "max"}]
    assert_sdk_parses([
        ("workers.get_stats", api.call("workers.get_stats", {**body, "items": items, "worker_ids": [worker]})),
        ("workers.get_stats", api.call("workers.get_stats", {**body, "items": items, "split_by_variant": True})),
        ("workers.get_activity_report", api.call("workers.get_activity_report", body)),
        ("workers.get_metric_keys", api.call("workers.get_metric_keys", {"worker_ids": [worker]})),
        ("queues.get_queue_metrics", api.call("queues.get_queue_metrics", {**body, "queue_ids": [queue],
                                                                           "refresh": True})),
        ("queues.get_all", api.call("queues.get_all_ex", {"id": [queue], "max_task_entries": 1})),
    ])
