"""The web UI: its files are served with the right types and headers, it renders server data only as text, and
every API call it makes exists on the server and accepts the body the UI sends (so that the UI cannot drift from
the API unnoticed). No browser is needed: the JavaScript is read as text."""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.server import web

STATIC = Path(web.__file__).parent / "static"
# The UI's own scripts (app.js and the view files built on it); vendored libraries are named vendor-*.
OWN_JS = sorted(p for p in STATIC.glob("*.js") if not p.name.startswith("vendor-"))
APP_JS = "\n".join(p.read_text(encoding="utf-8") for p in OWN_JS)
INDEX = (STATIC / "index.html").read_text(encoding="utf-8")

# Every request the UI makes goes through api("service.action", body) or request("auth.login", ...).
CALL = re.compile(r"""\b(?:api|request)\(\s*["']([a-z_]+\.[a-z_]+)["']""")


def ui_endpoints() -> set[str]:
    return set(CALL.findall(APP_JS))


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.inline_attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("src", "href"):
            if (values.get(key) or "").startswith("/ui/"):
                self.refs.append(values[key])  # type: ignore[arg-type]
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        self.inline_attrs += [f"<{tag} {k}>" for k in values if k == "style" or k.startswith("on")]


def _refs() -> _Refs:
    parser = _Refs()
    parser.feed(INDEX)
    return parser


# --- files and headers -----------------------------------------------------------------------------------------------
def test_index_serves_the_app(sqlite_server: Any) -> None:
    response = httpx.get(sqlite_server.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js"' in response.text
    assert 'id="login-form"' in response.text and 'id="main"' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("suffix,content_type",
                         [(".js", "javascript"), (".css", "text/css"), (".svg", "image/svg+xml")])
def test_assets_are_served_with_their_content_type(sqlite_server: Any, suffix: str, content_type: str) -> None:
    refs = [r for r in _refs().refs if r.endswith(suffix)]
    assert refs, f"index.html references no {suffix} file"
    for ref in refs:
        response = httpx.get(sqlite_server.url + ref)
        assert response.status_code == 200, ref
        assert content_type in response.headers["content-type"], (ref, response.headers["content-type"])
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == (STATIC / ref.removeprefix("/ui/")).read_bytes()


def test_missing_asset_is_a_404(sqlite_server: Any) -> None:
    assert httpx.get(sqlite_server.url + "/ui/nope.js").status_code == 404


def test_static_folder_is_flat_for_packaging() -> None:
    # pyproject.toml ships `server/web/static/*`: a file in a subfolder would be missing from the wheel.
    assert not [p for p in STATIC.iterdir() if p.is_dir()]


@pytest.mark.parametrize("link,tab", [
    ("/projects/{project}/tasks/{task}/output/log", "log"),  # the SDK's "results page" link (API >= 2.31)
    ("/projects/{project}/experiments/{task}/output/log", "log"),  # the same from older SDKs
    ("/projects/*/experiments/{task}/output/metrics/scalar", "scalars"),
    ("/projects/*/tasks/{task}/execution", "execution"),
    ("/projects/{project}/experiments/{task}", "log"),
    ("/projects/*/experiments/{task}/output/metrics/plots", "plots"),
    ("/projects/*/experiments/{task}/output/debugImages", "debug"),
    ("/projects/*/experiments/{task}/artifacts/output", "artifacts"),
])
def test_sdk_results_page_link_opens_the_task_in_the_ui(sqlite_server: Any, link: str, tab: str) -> None:
    api = Api(sqlite_server)
    task = api.task()
    url = sqlite_server.url + link.format(project=secrets.token_hex(16), task=task)
    first = httpx.get(url)
    # Into the UI's own route for the task's detail view, on the tab the link names.
    assert first.status_code in (302, 303, 307), (first.status_code, first.text[:200])
    assert first.headers["location"] == f"/#/task/{task}/{tab}"
    page = httpx.get(url, follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js"' in page.text and 'id="main"' in page.text
    # The fragment names a tab the UI has: app.js routes #/task/<id>/<tab> to the task detail, whose tabs besides
    # the log are registered as taskTabs.<tab> by the view files.
    assert r'hash.match(/^#\/task\/([^/?#]+)(?:\/([a-z-]+))?$/)' in APP_JS
    assert tab == "log" or f"taskTabs.{tab} = {{" in APP_JS, f"no view file registers the {tab} tab"


# The ClearML web app's paths (bookmarks, links in its docs) and the UI view each opens.
CLEARML_PATHS = [
    ("/dashboard", "/#/tasks"), ("/projects", "/#/projects"),
    ("/projects/*/experiments", "/#/tasks"), ("/projects/{project}/experiments", "/#/tasks/project/{project}"),
    ("/projects/{project}/tasks", "/#/tasks/project/{project}"),
    ("/workers-and-queues/workers", "/#/workers"), ("/workers-and-queues/queues", "/#/queues"),
]


def test_clearml_web_paths_open_the_matching_page(sqlite_server: Any) -> None:
    project = Api(sqlite_server).call("projects.create", name=f"ui-p-{secrets.token_hex(3)}")["id"]
    for path, fragment in CLEARML_PATHS:
        response = httpx.get(sqlite_server.url + path.format(project=project))
        assert response.status_code == 302, (path, response.status_code)
        assert response.headers["location"] == fragment.format(project=project), path
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        view = fragment.removeprefix("/#/").split("/")[0]
        assert view == "tasks" or f"views.{view} = " in APP_JS, f"no view file registers #/{view}"


def test_projects_api_paths_stay_api(sqlite_server: Any) -> None:
    assert httpx.post(sqlite_server.url + "/projects.get_all", json={}).status_code == 401  # the API, not the UI
    assert httpx.get(sqlite_server.url + "/projects/x/nothing/y").status_code == 404


# --- rendering safety -----------------------------------------------------------------------------------------------
def test_ui_never_renders_data_as_markup() -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc"):
        assert sink not in APP_JS, f"app.js uses {sink}: build elements and text nodes with h() instead"
    # The content security policy allows no inline script or style: index.html must not need them.
    refs = _refs()
    assert refs.inline_scripts == 0
    assert refs.inline_attrs == []
    assert "setAttribute(\"style\"" not in APP_JS and "setAttribute('style'" not in APP_JS


def test_all_requests_go_through_the_api_helpers() -> None:
    # request() for the API; fetchFile() for the files endpoint (same origin, the token only there).
    assert APP_JS.count("fetch(") == APP_JS.count("await fetch(") == 2, "only request() and fetchFile() may fetch"
    assert 'if (u.origin === location.origin && u.pathname.startsWith("/files/"))' in APP_JS
    # api() passes its endpoint on to request(); every other call names its endpoint literally.
    dynamic = re.findall(r"""(?<!function )\b(?:api|request)\(\s*(?!["'])\w*""", APP_JS)
    assert dynamic == ["request(endpoint"], "call api() with a literal endpoint name, so that the tests can check it"


# --- the UI's calls exist on the server -----------------------------------------------------------------------------
class Api:
    def __init__(self, server: Any):
        key, secret = server.credentials()
        self.http = httpx.Client(base_url=server.url, timeout=30)
        basic = base64.b64encode(f"{key}:{secret}".encode()).decode()
        # Log in exactly as the UI does: GET with Basic credentials, no body.
        login = self.http.get("/auth.login", headers={"Authorization": "Basic " + basic})
        assert login.status_code == 200, login.text
        self.token = login.json()["data"]["token"]
        self.http.headers["Authorization"] = "Bearer " + self.token

    def post(self, endpoint: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post("/" + endpoint, json=body)

    def call(self, endpoint: str, **body: Any) -> dict[str, Any]:
        response = self.post(endpoint, body)
        assert response.status_code == 200, (endpoint, response.text)
        return response.json()["data"]

    def task(self, **extra: Any) -> str:
        return self.call("tasks.create", name=f"ui-{secrets.token_hex(3)}", type="training",
                         script={"repository": "https://example.com/r.git", "entry_point": "train.py"}, **extra)["id"]

    def queue(self) -> str:
        return self.call("queues.create", name=f"ui-q-{secrets.token_hex(3)}")["id"]

    def queued(self) -> tuple[str, str, str]:
        """A queue with two tasks on it: (queue, first, second)."""
        queue = self.queue()
        first, second = self.task(), self.task()
        for task in (first, second):
            self.call("tasks.enqueue", task=task, queue=queue)
        return queue, first, second


def _with_log(api: Api) -> str:
    task = api.task()
    api.call("events.add_batch", requests=[
        {"task": task, "type": "log", "level": "info", "msg": "hello"},
        {"task": task, "type": "training_stats_scalar", "metric": "loss", "variant": "train", "iter": 1, "value": 0.5}])
    return task


# The body the UI sends for each endpoint it calls (built on fresh objects, so each call is valid on its own).
BODIES: dict[str, Callable[[Api], dict[str, Any]]] = {
    "tasks.get_all": lambda a: {"only_fields": ["id", "name", "type", "project", "user", "status", "status_reason",
                                                "status_message", "last_update", "created", "last_worker",
                                                "execution.queue"],
                                "order_by": ["-created"], "page": 0, "page_size": 50, "status": ["queued"],
                                "name": "ui-.*"},
    "tasks.get_by_id": lambda a: {"task": a.task()},
    "tasks.stop": lambda a: {"task": a.queued()[1]},
    "tasks.enqueue": lambda a: {"task": a.task(), "queue": a.queue()},
    "tasks.reset": lambda a: {"task": _with_log(a), "force": True},
    "tasks.clone": lambda a: {"task": a.task(), "new_task_name": "Clone of ui"},
    "tasks.delete": lambda a: {"task": a.task(), "force": True},
    "projects.get_all": lambda a: {"only_fields": ["id", "name"], "search_hidden": True},
    "projects.get_all_ex": lambda a: {"only_fields": ["id", "name", "created", "last_update"], "order_by": ["name"],
                                      "search_hidden": True, "include_stats": True},
    "queues.get_all": lambda a: {"order_by": ["name"], "search_hidden": True},
    "queues.create": lambda a: {"name": f"ui-new-{secrets.token_hex(3)}"},
    "queues.move_task_to_front": lambda a: (lambda q: {"queue": q[0], "task": q[2]})(a.queued()),
    "queues.remove_task": lambda a: (lambda q: {"queue": q[0], "task": q[1]})(a.queued()),
    "queues.move_task_forward": lambda a: (lambda q: {"queue": q[0], "task": q[2], "count": 1})(a.queued()),
    "queues.move_task_backward": lambda a: (lambda q: {"queue": q[0], "task": q[1], "count": 1})(a.queued()),
    "queues.move_task_to_back": lambda a: (lambda q: {"queue": q[0], "task": q[1]})(a.queued()),
    "queues.get_queue_metrics": lambda a: {"from_date": time.time() - 3600, "to_date": time.time(), "interval": 60,
                                           "queue_ids": [a.queue()], "refresh": True},
    "workers.get_metric_keys": lambda a: {"worker_ids": ["ui-worker"]},
    "workers.get_stats": lambda a: {"worker_ids": ["ui-worker"], "from_date": time.time() - 600, "to_date": time.time(),
                                    "interval": 10, "split_by_variant": True,
                                    "items": [{"key": "gpu_usage", "category": c} for c in ("avg", "min", "max")]},
    "workers.get_runtime_properties": lambda a: {"worker": "ui-worker"},
    "workers.get_all": lambda a: {},
    "users.get_all": lambda a: {},
    "events.get_task_log": lambda a: {"task": _with_log(a), "order": "asc", "scroll_id": "", "batch_size": 1000},
    "events.scalar_metrics_iter_histogram": lambda a: {"task": _with_log(a)},
    "events.get_task_single_value_metrics": lambda a: {"tasks": [_with_log(a)]},
    "events.get_task_plots": lambda a: {"task": _with_log(a), "iters": 20, "no_scroll": True},
    "events.debug_images": lambda a: {"metrics": [{"task": _with_log(a)}], "iters": 20},
    "tasks.edit": lambda a: {"task": a.task(), "script": {"branch": "dev", "entry_point": "main.py"},
                             "container": {"image": "python:3.12-slim", "arguments": "--ipc=host",
                                           "setup_shell_script": "echo hi"}},
    "tasks.edit_hyper_params": lambda a: {"task": a.task(), "replace_hyperparams": "none", "hyperparams": [
        {"section": "Args", "name": "lr", "value": "0.1", "type": "float", "description": ""}]},
    "tasks.delete_hyper_params": lambda a: (lambda t: (a.call("tasks.edit_hyper_params", task=t, hyperparams=[
        {"section": "Args", "name": "lr", "value": "1"}, {"section": "General", "name": "x", "value": "1"}]),
        {"task": t, "hyperparams": [{"section": "Args", "name": "lr"}, {"section": "General"}]})[1])(a.task()),
    "tasks.edit_configuration": lambda a: {"task": a.task(), "configuration": [
        {"name": "General", "value": "a: 1", "type": "yaml", "description": ""}]},
    "tasks.delete_configuration": lambda a: (lambda t: (a.call("tasks.edit_configuration", task=t, configuration=[
        {"name": "extra", "value": "x"}]), {"task": t, "configuration": ["extra"]})[1])(a.task()),
    "tasks.set_requirements": lambda a: {"task": a.task(), "requirements": {"pip": "numpy==1.26.4\n"}},
}


def test_ui_calls_are_found() -> None:
    found = ui_endpoints()
    # A guard on the parser itself: the views' core calls must be seen, or the check below checks nothing.
    assert {"auth.login", "tasks.get_all", "queues.get_all", "workers.get_all", "events.get_task_log"} <= found
    unknown = found - set(BODIES) - {"auth.login"}
    assert not unknown, f"app.js calls {sorted(unknown)}: add the body the UI sends to BODIES in tests/test_web.py"


def test_every_ui_call_exists_and_accepts_the_ui_body(sqlite_server: Any) -> None:
    api = Api(sqlite_server)
    for endpoint in sorted(ui_endpoints() - {"auth.login"}):
        response = api.post(endpoint, BODIES[endpoint](api))
        meta = response.json()["meta"]
        assert response.status_code != 404, f"the UI calls {endpoint}, which the server does not have"
        assert response.status_code == 200 and meta["result_code"] == 200, (endpoint, meta)


def test_answers_have_the_shapes_the_ui_reads(sqlite_server: Any) -> None:
    api = Api(sqlite_server)
    queue, first, second = api.queued()
    # Queue entries name the task and when it was added; paging and every sortable column are accepted.
    queues = {q["id"]: q for q in api.call("queues.get_all", order_by=["name"])["queues"]}
    assert [e["task"] for e in queues[queue]["entries"]] == [first, second]
    assert all(e["added"] for e in queues[queue]["entries"])
    for order in ("name", "-name", "status", "-status", "created", "-created", "last_update", "-last_update"):
        api.call("tasks.get_all", order_by=[order], page=0, page_size=1)
    assert len(api.call("tasks.get_all", page=0, page_size=1)["tasks"]) == 1
    # The log is followed with scroll_id as the cursor: a second read returns only what is new.
    task = _with_log(api)
    body = {"task": task, "order": "asc", "scroll_id": "", "batch_size": 1000}
    page = api.call("events.get_task_log", **body)
    assert [e["msg"] for e in page["events"]] == ["hello"] and page["scroll_id"]
    assert api.call("events.get_task_log", **{**body, "scroll_id": page["scroll_id"]})["events"] == []
    api.call("events.add_batch", requests=[{"task": task, "type": "log", "msg": "more"}])
    more = api.call("events.get_task_log", **{**body, "scroll_id": page["scroll_id"]})["events"]
    assert [e["msg"] for e in more] == ["more"]
    # Scalars come as {metric: {variant: {x, y}}}.
    histogram = api.call("events.scalar_metrics_iter_histogram", task=task)
    assert histogram["loss"]["train"]["x"] == [1] and histogram["loss"]["train"]["y"] == [0.5]
    # Clone answers the new id the UI opens.
    assert len(api.call("tasks.clone", task=task, new_task_name="copy")["id"]) == 32


def test_tasks_show_their_owner(sqlite_server: Any) -> None:
    """The list and the detail view show who owns each task: the owner's name, from users.get_all by the task's
    `user` id, which the list asks for."""
    api = Api(sqlite_server)
    task = api.task()
    body = {k: v for k, v in BODIES["tasks.get_all"](api).items() if k != "status"}  # the UI's, any status
    listed = api.call("tasks.get_all", **body, id=[task])["tasks"]
    owners = {u["id"]: u["name"] for u in api.call("users.get_all", **BODIES["users.get_all"](api))["users"]}
    assert owners[listed[0]["user"]] == api.call("users.get_current_user")["user"]["name"]
    assert re.search(r'\[null, "Owner"', APP_JS), "the task list has no Owner column"
    assert re.search(r'fact\("Owner", task\.user \? names\.users\.get\(task\.user\)', APP_JS), \
        "the task view shows no owner"
    assert 'userNames(tasks.map((t) => t.user))' in APP_JS and 'userNames([task.user])' in APP_JS


def test_errors_carry_the_message_the_banner_shows(sqlite_server: Any) -> None:
    api = Api(sqlite_server)
    bad = api.post("tasks.get_all", {"name": "("})
    assert bad.status_code == 400 and "regular expression" in bad.json()["meta"]["result_msg"]
    anonymous = httpx.post(sqlite_server.url + "/tasks.get_all", json={})
    assert anonymous.status_code == 401 and anonymous.json()["meta"]["result_msg"]
    wrong = httpx.get(sqlite_server.url + "/auth.login",
                      headers={"Authorization": "Basic " + base64.b64encode(b"nobody:nothing").decode()})
    assert wrong.status_code == 401 and "Invalid credentials" in wrong.json()["meta"]["result_msg"]


def test_projects_page_counts_come_from_the_server(sqlite_server: Any) -> None:
    """The Projects page counts each project's tasks by status with one call (include_stats), not by listing tasks."""
    api = Api(sqlite_server)
    project = api.call("projects.create", name=f"stats-{secrets.token_hex(3)}")["id"]
    other = api.call("projects.create", name=f"stats-{secrets.token_hex(3)}")["id"]
    queue = api.queue()
    drafts = [api.task(project=project) for _ in range(3)]
    api.call("tasks.enqueue", task=drafts[0], queue=queue)
    archived = api.task(project=project)
    api.call("tasks.update", task=archived, system_tags=["archived"])
    found = {p["id"]: p for p in api.call("projects.get_all_ex", **BODIES["projects.get_all_ex"](api))["projects"]}
    assert found[project]["stats"]["active"] == {"status_count": {"created": 2, "queued": 1}, "total_tasks": 3}
    assert found[other]["stats"]["active"] == {"status_count": {}, "total_tasks": 0}
    assert '"projects.get_all_ex"' in APP_JS and "include_stats: true" in APP_JS
