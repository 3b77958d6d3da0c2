"""The web UI: one static page that talks to the API with the same calls as any client."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def routes() -> list:
    async def index(_request):  # noqa: ANN001, ANN202
        return FileResponse(STATIC / "index.html")

    return [Route("/", index), Mount("/ui", app=StaticFiles(directory=STATIC), name="ui")]
