"""`/metrics` of the server and of an agent daemon: what an operator's Prometheus sees. The server's figures on both
databases, read as a scraper reads them; then a real Prometheus server scraping a server and a daemon, queried
through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentkit import DaemonProcess, agent_env, create_task, enqueue, make_repo, wait_final, wait_status
from conftest import ServerProcess, free_port, unavailable


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer: (name, sorted labels) -> value."""
    answer = httpx.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain"), answer.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_server_metrics_follow_queues_tasks_and_long_polls(server: ServerProcess) -> None:
    client = server.client()
    queue = client.call("queues.create", {"name": "metered"})["id"]
    first, second = create_task(client, name="one"), create_task(client, name="two")
    for task in (first, second):
        client.call("tasks.enqueue", {"task": task, "queue": queue})
    time.sleep(1.1)  # the database figures are cached for a second
    seen = scrape(server.url)  # no credentials: a scraper has none
    assert seen[("conveyor_queue_entries", (("queue", "metered"),))] == 2
    assert seen[("conveyor_queue_oldest_entry_age_seconds", (("queue", "metered"),))] >= 1.0
    assert seen[("conveyor_tasks", (("status", "queued"),))] == 2
    assert seen[("conveyor_queue_enqueued_total", (("queue", "metered"),))] == 2
    assert seen[("conveyor_request_duration_seconds_count", (("endpoint", "tasks.enqueue"),))] == 2
    assert seen[("conveyor_workers_alive", ())] == 0

    client.call("queues.get_next_task", {"queue": queue})
    # a long-poll on an empty queue is counted while it waits
    empty = client.call("queues.create", {"name": "empty"})["id"]
    waiting = threading.Thread(target=client.call, args=("queues.get_next_task", {"queue": empty, "wait": 3}),
                               kwargs={"timeout": 30})
    waiting.start()
    deadline = time.time() + 5
    while scrape(server.url)[("conveyor_long_poll_waiting", ())] != 1:
        assert time.time() < deadline, "the waiting long-poll was never counted"
        time.sleep(0.1)
    client.call("workers.register", {"worker": "metered-worker", "queues": [queue], "timeout": 60})
    time.sleep(1.1)
    seen = scrape(server.url)
    assert seen[("conveyor_queue_dequeued_total", (("queue", "metered"),))] == 1
    assert seen[("conveyor_queue_entries", (("queue", "metered"),))] == 1
    assert seen[("conveyor_workers_alive", ())] == 1
    waiting.join()
    assert scrape(server.url)[("conveyor_long_poll_waiting", ())] == 0
    key, secret = server.credentials()
    text = httpx.get(f"{server.url}/metrics").text
    assert key not in text and secret not in text


def test_queue_series_stay_bounded_and_end_with_their_queue(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", extra_env={"CONVEYOR__SERVER__METRICS_MAX_QUEUES": "3"}).start()
    try:
        client = server.client()
        made = [client.call("queues.create", {"name": name})["id"] for name in ("first", "second", "third", "fourth")]
        for queue in made[2:]:  # the default queue, "first" and "second" get series of their own; these two, one
            client.call("tasks.enqueue", {"task": create_task(client, name="t"), "queue": queue})
        time.sleep(1.1)  # the database figures are cached for a second
        seen = scrape(server.url)
        labels = {dict(labels).get("queue") for (name, labels) in seen if name == "conveyor_queue_entries"}
        assert labels == {"default", "first", "second", "(other queues)"}, labels
        assert seen[("conveyor_queue_entries", (("queue", "(other queues)"),))] == 2
        assert seen[("conveyor_queue_enqueued_total", (("queue", "(other queues)"),))] == 2
        assert seen[("conveyor_queue_oldest_entry_age_seconds", (("queue", "(other queues)"),))] >= 1.0

        # "second" goes: its series end; "third" goes too, and the summed counters keep its counts
        client.call("queues.delete", {"queue": made[1], "force": True})
        client.call("queues.delete", {"queue": made[2], "force": True})
        fifth = client.call("queues.create", {"name": "fifth"})["id"]
        client.call("tasks.enqueue", {"task": create_task(client, name="t"), "queue": fifth})
        time.sleep(1.1)
        seen = scrape(server.url)

        def labelled(metric: str) -> set[str | None]:
            return {dict(labels).get("queue") for (name, labels) in seen if name == metric}

        # the database's figures: the first three queues made, as every server process answers them
        assert labelled("conveyor_queue_entries") == {"default", "first", "fourth", "(other queues)"}
        assert seen[("conveyor_queue_entries", (("queue", "(other queues)"),))] == 1  # "fifth"'s entry
        # this process's counters: no queue moves out of the summed series (its counts would drop, which Prometheus
        # reads as a reset), and "fifth" takes the slot "second" freed
        assert labelled("conveyor_queue_enqueued_total") == {"default", "first", "fifth", "(other queues)"}
        assert seen[("conveyor_queue_enqueued_total", (("queue", "(other queues)"),))] == 2  # never goes down
        assert seen[("conveyor_queue_enqueued_total", (("queue", "fifth"),))] == 1
    finally:
        server.stop()


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: conveyor-server
    static_configs: [{{targets: ["127.0.0.1:{server}"]}}]
  - job_name: conveyor-agent
    static_configs: [{{targets: ["127.0.0.1:{agent}"]}}]
"""


def query(prometheus: str, promql: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_series(prometheus: str, promql: str, timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = query(prometheus, promql)
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"Prometheus has no {promql} after {timeout} s; its targets: "
                         f"{httpx.get(f'{prometheus}/api/v1/targets').text}")


@pytest.fixture
def retrying_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that hands a retry straight back to the worker it failed on (the one daemon here; by default it waits
    conveyor.server.retry_elsewhere_sec for another worker first)."""
    proc = ServerProcess(tmp_path / "home", extra_env={"CONVEYOR__SERVER__RETRY_ELSEWHERE_SEC": "0"}).start()
    yield proc
    proc.stop()


def test_prometheus_scrapes_the_server_and_a_daemon(retrying_server: ServerProcess, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus is not installed", ".ci/run must apt-install prometheus")
    agent_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.format(server=retrying_server.port, agent=agent_port))
    log = open(tmp_path / "prometheus.log", "wb")
    prometheus = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    env = agent_env(retrying_server, tmp_path, CLEARML_AGENT__AGENT__METRICS_PORT=str(agent_port))
    daemon = DaemonProcess(retrying_server, tmp_path, "--queue", "default", env=env)
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        client = retrying_server.client()
        _work, bare = make_repo(tmp_path / "repos", {"train.py": "print('metered')\n"})
        task = create_task(client, repository=f"file://{bare}")
        enqueue(client, task)
        assert wait_final(client, task)["status"] == "completed"
        # a clone that cannot reach its host fails the worker's way, is retried once (retries: 1), fails again
        unreachable = create_task(client, repository=f"http://127.0.0.1:{free_port()}/nowhere.git", hyperparams={
            "properties": {"retries": {"section": "properties", "name": "retries", "value": "1", "type": "int"}}})
        enqueue(client, unreachable)
        wait_for_series(url, 'conveyor_agent_task_outcomes_total{status="failed",failure_class="infrastructure"} == 2')
        assert wait_final(client, unreachable)["status"] == "failed"
        # the server's series, and the daemon's, through Prometheus's HTTP API
        done = wait_for_series(url, 'conveyor_tasks{job="conveyor-server",status="completed"} == 1')
        assert done[0]["metric"]["status"] == "completed"
        wait_for_series(url, 'conveyor_queue_dequeued_total{job="conveyor-server",queue="default"} == 3')
        pickup = wait_for_series(url, 'conveyor_agent_phase_seconds_count{job="conveyor-agent",phase="pickup"} == 1')
        assert pickup[0]["metric"]["instance"] == f"127.0.0.1:{agent_port}"
        wait_for_series(url, 'conveyor_agent_task_outcomes_total{status="completed",failure_class="none"} == 1')
        wait_for_series(url, 'conveyor_agent_pickups_total{queue="default"} == 3')  # one run, two tries
        wait_for_series(url, 'up{job="conveyor-agent"} == 1 and on() up{job="conveyor-server"} == 1')
    finally:
        daemon.stop()
        prometheus.terminate()
        prometheus.wait(30)
        log.close()


# Waits for a file, so that the test sees the task running; then fails or succeeds as its argument says.
HOLD = ("import os, sys, time\nprint('holding', flush=True)\n"
        "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\nsys.exit(int(sys.argv[2]))\n")


def test_agent_metrics_show_gpus_held_and_outcomes(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """A daemon with two (fake) dynamic GPUs: the one its task holds shows as allocated while it runs and free after;
    a failed run (exit 3: the task's own failure) counts under its failure class."""
    client = sqlite_server.client()
    client.call("queues.create", {"name": "single"})
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps([{"index": i, "uuid": f"GPU-{i}", "memory_total_mb": 8192} for i in range(2)]))
    port = free_port()
    env = agent_env(sqlite_server, tmp_path, CONVEYOR_FAKE_GPUS=str(gpus), CLEARML_AGENT__AGENT__METRICS_PORT=str(port))
    daemon = DaemonProcess(sqlite_server, tmp_path, "--dynamic-gpus", "--gpus", "0-1", "--queue", "single=1", env=env)
    agent = f"http://127.0.0.1:{port}"
    release = tmp_path / "release"
    try:
        assert scrape(agent)[("conveyor_agent_gpu_allocated", (("gpu", "0"),))] == 0
        task = create_task(client, diff=HOLD, entry_point=f"hold.py {release} 3")
        enqueue(client, task, "single")
        wait_status(client, task, "in_progress")
        deadline = time.time() + 30
        while scrape(agent)[("conveyor_agent_tasks_running", ())] != 1:
            assert time.time() < deadline
            time.sleep(0.1)
        seen = scrape(agent)
        assert seen[("conveyor_agent_gpu_allocated", (("gpu", "0"),))] == 1
        assert seen[("conveyor_agent_gpu_allocated", (("gpu", "1"),))] == 0
        assert seen[("conveyor_agent_pickups_total", (("queue", "single"),))] == 1
        release.touch()
        assert wait_final(client, task)["status"] == "failed"
        failed = ("conveyor_agent_task_outcomes_total", (("failure_class", "task"), ("status", "failed")))
        while failed not in (seen := scrape(agent)):  # the daemon counts the run once it has settled it
            assert time.time() < deadline
            time.sleep(0.1)
        assert seen[failed] == 1
        assert seen[("conveyor_agent_tasks_running", ())] == 0
        assert seen[("conveyor_agent_gpu_allocated", (("gpu", "0"),))] == 0
        assert seen[("conveyor_agent_phase_seconds_count", (("phase", "run"),))] == 1
    finally:
        daemon.stop()
