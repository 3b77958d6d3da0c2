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
    if "metrics" in rest or "scalar" in rest or "plots" in rest:
        return "scalars"
    if rest.startswith(("execution", "hyper-params", "configuration", "artifacts", "info-output")):
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


def routes() -> list:
    async def index(_request):  # noqa: ANN001, ANN202
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    return [Route("/", index), Mount("/ui", app=_StaticFiles(directory=STATIC), name="ui"),
            Route("/projects/{project}/{kind}/{task}", task_page),
            Route("/projects/{project}/{kind}/{task}/{rest:path}", task_page)]
