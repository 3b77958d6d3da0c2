"""The web UI: one static page that talks to the API with the same calls as any client."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The paths the web UI answers (the server's router sends every other path to the API): its page and files, and
# the ClearML web app's paths that the SDK prints or users bookmark (each opens the matching view).
WEB_PATHS = frozenset({"/", "/dashboard", "/projects", "/workers-and-queues"})
WEB_PREFIXES = ("/ui/", "/projects/", "/workers-and-queues/")

# The page loads only its own files and talks only to its own server: no inline script or style, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate on every load (a 304 when unchanged), so that an upgraded server never runs a stale script.
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def _tab(rest: str) -> str:
    """The UI's tab for the rest of a ClearML web path: output/log, output/metrics/scalar, execution, …"""
    if "plots" in rest:
        return "plots"
    if "debugImages" in rest or "debug-images" in rest:
        return "debug"
    if "metrics" in rest or "scalar" in rest:
        return "scalars"
    if rest.startswith("artifacts"):
        return "artifacts"
    if rest.startswith(("execution", "hyper-params", "configuration", "info-output")):
        return "execution"
    return "log"


async def task_page(request: Request) -> Response:
    """The link the SDK prints ("ClearML results page: <web>/projects/<project>/tasks/<task>/output/log", also
    `experiments/` and `*` as project) opens the task's detail view: the UI routes on the URL's fragment."""
    params = request.path_params
    if params["kind"] not in ("tasks", "experiments"):
        return PlainTextResponse("Not Found", status_code=404)
    target = f"/#/task/{quote(params['task'], safe='')}/{_tab(params.get('rest', ''))}"
    return RedirectResponse(target, status_code=302, headers=SECURITY_HEADERS)


def _to_view(fragment: str):  # noqa: ANN202 - a Starlette endpoint
    """A ClearML web app path that opens one of the UI's views (its routes live in the URL's fragment)."""
    async def redirect(_request: Request) -> Response:
        return RedirectResponse("/#/" + fragment, status_code=302, headers=SECURITY_HEADERS)
    return redirect


async def project_tasks(request: Request) -> Response:
    """`/projects/<project>/experiments` (ClearML's task table of a project; `*` is every project)."""
    project = request.path_params["project"]
    if request.path_params["kind"] not in ("tasks", "experiments"):
        return PlainTextResponse("Not Found", status_code=404)
    target = "/#/tasks" if project in ("*", "") else f"/#/tasks/project/{quote(project, safe='')}"
    return RedirectResponse(target, status_code=302, headers=SECURITY_HEADERS)


def routes() -> list:
    async def index(_request):  # noqa: ANN001, ANN202
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    return [Route("/", index), Mount("/ui", app=_StaticFiles(directory=STATIC), name="ui"),
            # The ClearML web app's paths: the dashboard, projects, a project's tasks, workers and queues.
            Route("/dashboard", _to_view("tasks")), Route("/projects", _to_view("projects")),
            Route("/workers-and-queues", _to_view("workers")),
            Route("/workers-and-queues/workers", _to_view("workers")),
            Route("/workers-and-queues/queues", _to_view("queues")),
            Route("/projects/{project}/{kind}", project_tasks),
            Route("/projects/{project}/{kind}/{task}", task_page),
            Route("/projects/{project}/{kind}/{task}/{rest:path}", task_page)]
