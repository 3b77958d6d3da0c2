"""A task's metrics read back: what the real SDK reports (scalars, single values, plots, debug images) comes back
through its own get_reported_* calls and through the calls the web app's task pages make. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _api import module_server
from conftest import ServerProcess
from conveyor.client import ApiCallError, ApiClient
from test_orchestration_api import assert_sdk_parses
from test_sdk import run_sdk


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(request.param, tmp_path_factory.mktemp(f"events-{request.param}")) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(srv: ServerProcess) -> Iterator[ApiClient]:
    with srv.client() as client:
        yield client


@pytest.fixture(scope="module")
def reported(srv: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One SDK run that reports every kind of metric, then reads them back with the SDK's own calls."""
    project = f"events-{uuid.uuid4().hex[:6]}"
    return run_sdk(srv, tmp_path_factory.mktemp("sdk"), f"""
        import json
        import numpy as np
        from clearml import Task
        task = Task.init(project_name={project!r}, task_name="metrics", reuse_last_task_id=False,
                         auto_connect_frameworks=False, auto_resource_monitoring=False)
        logger = task.get_logger()
        for i in range(1, 4):
            logger.report_scalar("loss", "train", value=1.0 / i, iteration=i)
            logger.report_scalar("loss", "val", value=2.0 / i, iteration=i)
        logger.report_single_value("accuracy", 0.93)
        logger.report_scatter2d("curve", "roc", iteration=3, scatter=[[0, 0], [0.5, 0.8], [1, 1]])
        logger.report_plotly("custom", "bars", iteration=3, figure={{"data": [{{"type": "bar", "y": [1, 2]}}]}})
        for i in (1, 2):
            image = np.full((8, 8, 3), 40 * i, dtype=np.uint8)
            logger.report_image("samples", "digit", iteration=i, image=image)
        task.flush(wait_for_uploads=True)
        answer = {{
            "id": task.id,
            "project": task.project,
            "scalars": task.get_reported_scalars(),
            "by_time": task.get_reported_scalars(x_axis="timestamp"),
            "single": task.get_reported_single_values(),
            "plots": task.get_reported_plots(),
            "images": task.get_debug_samples("samples", "digit"),
        }}
        task.close()
        print(json.dumps(answer))
    """)


def test_the_sdk_reads_back_scalars_and_single_values(reported: dict[str, Any]) -> None:
    loss = reported["scalars"]["loss"]
    assert loss["train"]["x"] == [1, 2, 3] and loss["train"]["y"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert loss["val"]["y"] == pytest.approx([2.0, 1.0, 2 / 3])
    assert "Summary" not in reported["scalars"]  # a single value is no series
    assert all(x > 1_600_000_000_000 for x in reported["by_time"]["loss"]["train"]["x"])  # epoch ms
    assert reported["single"] == {"accuracy": pytest.approx(0.93)}


def test_the_sdk_reads_back_plots_as_it_sent_them(reported: dict[str, Any]) -> None:
    plots = {(p["metric"], p["variant"]): p for p in reported["plots"]}
    assert set(plots) >= {("curve", "roc"), ("custom", "bars")}
    roc = json.loads(plots[("curve", "roc")]["plot_str"])
    assert roc["data"][0]["x"] == [0, 0.5, 1] and roc["data"][0]["y"] == [0, 0.8, 1]
    assert json.loads(plots[("custom", "bars")]["plot_str"])["data"][0]["type"] == "bar"
    assert plots[("curve", "roc")]["iter"] == 3


def test_debug_images_carry_the_url_of_the_uploaded_image(srv: ServerProcess, reported: dict[str, Any]) -> None:
    images = reported["images"]
    assert sorted(e["iter"] for e in images) == [1, 2]
    token = httpx.get(f"{srv.url}/auth.login", auth=srv.credentials(), timeout=10).json()["data"]["token"]
    for event in images:
        assert event["metric"] == "samples" and event["variant"] == "digit"
        assert event["url"].startswith(f"{srv.url}/files/"), event["url"]
        image = httpx.get(event["url"], headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert image.status_code == 200 and len(image.content) > 0


def test_the_web_apps_calls_on_a_tasks_metrics(api: ApiClient, reported: dict[str, Any]) -> None:
    tid = reported["id"]
    metrics = api.call("events.get_task_metrics", {"tasks": [tid], "event_type": "plot"})["metrics"]
    assert metrics == [{"task": tid, "metrics": ["curve", "custom"]}]
    images = api.call("events.get_task_metrics", {"tasks": [tid], "event_type": "training_debug_image"})
    assert images["metrics"][0]["metrics"] == ["samples"]

    raw = api.call("events.scalar_metrics_iter_raw", {"task": tid, "metric": {"metric": "loss", "variants": ["val"]},
                                                      "batch_size": 2, "count_total": True})
    assert raw["total"] == 3 and raw["returned"] == 2
    assert raw["variants"]["val"]["iter"] == [1, 2] and raw["variants"]["val"]["y"] == pytest.approx([2.0, 1.0])
    more = api.call("events.scalar_metrics_iter_raw", {"task": tid, "metric": {"metric": "loss", "variants": ["val"]},
                                                       "batch_size": 2, "scroll_id": raw["scroll_id"]})
    assert more["variants"]["val"]["iter"] == [3]
    done = api.call("events.scalar_metrics_iter_raw", {"task": tid, "metric": {"metric": "loss"},
                                                       "scroll_id": more["scroll_id"]})
    assert done["returned"] == 0

    values = api.call("events.get_task_single_value_metrics", {"tasks": [tid]})["tasks"]
    assert values[0]["task"] == tid and values[0]["task_name"] == "metrics"
    assert [(v["metric"], v["variant"]) for v in values[0]["values"]] == [("Summary", "accuracy")]

    compared = api.call("events.get_multi_task_plots", {"tasks": [tid], "iters": 1})["plots"]
    entry = compared["curve"]["roc"][tid]["3"]
    assert entry["name"] == "metrics" and json.loads(entry["plots"][0]["plot_str"])["data"]

    sample = api.call("events.get_debug_image_sample", {"task": tid, "metric": "samples", "variant": "digit"})
    assert sample["event"]["iter"] == 2 and (sample["min_iteration"], sample["max_iteration"]) == (1, 2)
    earlier = api.call("events.next_debug_image_sample", {"task": tid, "scroll_id": sample["scroll_id"],
                                                          "navigate_earlier": True, "next_iteration": True})
    assert earlier["event"]["iter"] == 1 and earlier["event"]["url"] != sample["event"]["url"]

    compared = api.call("events.multi_task_scalar_metrics_iter_histogram", {"tasks": [tid]})
    assert compared["loss"]["val"][tid]["name"] == "metrics" and compared["loss"]["val"][tid]["x"] == [1, 2, 3]
    latest = api.call("events.get_task_latest_scalar_values", {"task": tid})["metrics"]
    [loss] = [m for m in latest if m["name"] == "loss"]
    train = {v["name"]: v for v in loss["variants"]}["train"]
    assert train["last_value"] == pytest.approx(1 / 3)
    assert train["last_100_value"] == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    only_val = api.call("events.get_task_events", {"task": tid, "event_type": "training_stats_scalar",
                                                   "metrics": [{"metric": "loss", "variants": ["val"]}]})
    assert only_val["total"] == 3 and {e["variant"] for e in only_val["events"]} == {"val"}

    variants = api.call("projects.get_unique_metric_variants", {"project": reported["project"]})["metrics"]
    assert {(m["metric"], m["variant"]) for m in variants} >= {("loss", "train"), ("loss", "val")}


def test_single_events_and_model_events(api: ApiClient) -> None:
    tid = api.call("tasks.create", {"name": f"one-{uuid.uuid4().hex[:6]}", "type": "training"})["id"]
    api.call("events.add", {"task": tid, "type": "training_stats_scalar", "metric": "m", "variant": "v",
                            "value": 4.5, "iter": 7})
    histogram = api.call("events.scalar_metrics_iter_histogram", {"task": tid})
    assert histogram["m"]["v"]["x"] == [7] and histogram["m"]["v"]["y"] == [4.5]
    with pytest.raises(ApiCallError) as info:
        api.call("events.add", {"task": tid, "type": "training_stats_scalar", "metric": "m", "value": "high"})
    assert info.value.code == 400 and "numeric 'value'" in info.value.msg
    with pytest.raises(ApiCallError) as info:
        api.call("events.add", {"task": "0" * 32, "type": "log", "msg": "x"})
    assert info.value.code == 400 and info.value.subcode == 101

    model = uuid.uuid4().hex  # an OutputModel's metrics: the SDK marks them model_event
    api.call("events.add_batch", {"requests": [{"task": model, "model_event": True, "type": "training_stats_scalar",
                                                "metric": "f1", "variant": "test", "value": 0.7, "iter": 1}]})
    events = api.call("events.get_task_events", {"task": model, "model_events": True})["events"]
    assert [(e["metric"], e["value"]) for e in events] == [("f1", 0.7)]
    with pytest.raises(ApiCallError):
        api.call("events.get_task_events", {"task": model})  # not a task
    sneaked = api.call("events.add_batch", {"requests": [{"task": tid, "model_event": True, "type": "log",
                                                          "msg": "not through the task's checks"}]})
    assert sneaked["added"] == 0 and "is a task, not a model" in sneaked["errors_info"][tid]


def test_many_points_are_down_sampled_and_a_bad_scroll_is_refused(api: ApiClient, tmp_path: Path) -> None:
    tid = api.call("tasks.create", {"name": f"long-{uuid.uuid4().hex[:6]}", "type": "training"})["id"]
    api.call("events.add_batch", {"requests": [
        {"task": tid, "type": "training_stats_scalar", "metric": "loss", "variant": "x", "value": float(i), "iter": i}
        for i in range(100)]})
    series = api.call("events.scalar_metrics_iter_histogram", {"task": tid, "samples": 10})["loss"]["x"]
    assert series["x"] == list(range(0, 100, 10)) and series["y"][0] == pytest.approx(4.5)
    with pytest.raises(ApiCallError) as info:
        api.call("events.scalar_metrics_iter_raw", {"task": tid, "metric": {"metric": "loss"}, "scroll_id": "nope"})
    assert info.value.code == 400 and "scroll_id" in info.value.msg


def test_a_forged_scroll_id_is_a_400_never_a_500(api: ApiClient) -> None:
    """Scroll ids carry their position as base64 JSON, so a client can send any JSON in them: numbers out of
    range (Infinity, NaN, 10**30) are refused like any other bad scroll."""
    import base64

    tid = api.call("tasks.create", {"name": f"scroll-{uuid.uuid4().hex[:6]}", "type": "training"})["id"]
    api.call("events.add", {"task": tid, "type": "training_stats_scalar", "metric": "m", "variant": "v",
                            "value": 1.0, "iter": 1})

    def forged(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode()

    calls = [("events.scalar_metrics_iter_raw", {"task": tid, "metric": {"metric": "m"},
                                                 "scroll_id": forged('{"seq": ' + bad + '}')})
             for bad in ("1e400", "100000000000000000000000000000", "-100000000000000000000000000000")]
    calls += [(endpoint, {"task": tid, "tasks": [tid], "metrics": [{"task": tid}],
                          "scroll_id": forged('{"past": {"' + tid + '": ' + bad + '}}')})
              for endpoint in ("events.get_task_plots", "events.debug_images")
              for bad in ("Infinity", "NaN", "-Infinity")]
    for endpoint, body in calls:
        try:
            api.call(endpoint, body)
        except ApiCallError as exc:
            assert exc.code == 400 and "scroll_id" in exc.msg, (endpoint, body, exc)


def test_events_answers_parse_with_sdk_schemas(api: ApiClient, reported: dict[str, Any]) -> None:
    tid = reported["id"]
    sample = api.call("events.get_debug_image_sample", {"task": tid, "metric": "samples", "variant": "digit"})
    calls: list[tuple[str, dict[str, Any]]] = [
        ("events.get_task_metrics", {"tasks": [tid], "event_type": "plot"}),
        ("events.get_task_single_value_metrics", {"tasks": [tid]}),
        ("events.get_task_plots", {"task": tid, "iters": 1}),
        ("events.get_multi_task_plots", {"tasks": [tid], "iters": 1}),
        ("events.debug_images", {"metrics": [{"task": tid, "metric": "samples"}], "iters": 5}),
        ("events.next_debug_image_sample", {"task": tid, "scroll_id": sample["scroll_id"]}),
        ("events.scalar_metrics_iter_raw", {"task": tid, "metric": {"metric": "loss"}, "count_total": True}),
        ("events.scalar_metrics_iter_histogram", {"task": tid, "key": "iso_time"}),
        ("events.multi_task_scalar_metrics_iter_histogram", {"tasks": [tid]}),
        ("events.get_task_latest_scalar_values", {"task": tid}),
        ("events.get_task_events", {"task": tid, "event_type": "plot"}),
        ("projects.get_unique_metric_variants", {"project": reported["project"]}),
    ]
    assert_sdk_parses([("events.get_debug_image_sample", sample)] +
                      [(endpoint, api.call(endpoint, body)) for endpoint, body in calls])
