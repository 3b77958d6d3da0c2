"""The files server under `/files` (clearml-wire.md §6.5): the real SDK's artifacts, then the raw HTTP surface."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess
from test_sdk import run_sdk


def _token(server: ServerProcess) -> str:
    key, secret = server.credentials()
    res = httpx.get(f"{server.url}/auth.login", auth=(key, secret), timeout=10)
    res.raise_for_status()
    return res.json()["data"]["token"]


@pytest.fixture
def bearer(sqlite_server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(sqlite_server)}"}


def test_sdk_upload_artifact_round_trip(sqlite_server: ServerProcess, bearer: dict[str, str], tmp_path: Path) -> None:
    project, name = f"files-{uuid.uuid4().hex[:6]}", f"artifact-{uuid.uuid4().hex[:6]}"
    answer = run_sdk(sqlite_server, tmp_path / "up", f"""
        import json
        from clearml import Task
        task = Task.init(project_name={project!r}, task_name={name!r}, reuse_last_task_id=False,
                         auto_connect_frameworks=False, auto_resource_monitoring=False)
        task.upload_artifact("cfg", {{"a": 1}})
        task_id = task.id
        task.close()
        print(json.dumps({{"id": task_id}}))
    """)
    tid = answer["id"]
    with sqlite_server.client() as api:
        task = api.call("tasks.get_by_id", {"task": tid})["task"]
    artifacts = {a["key"]: a for a in task["execution"]["artifacts"]}
    uri = artifacts["cfg"]["uri"]
    assert uri.startswith(f"{sqlite_server.url}/files/"), uri
    res = httpx.get(uri, headers=bearer, timeout=10)
    assert res.status_code == 200 and res.json() == {"a": 1}
    stored = sqlite_server.home / ".conveyor" / "files" / uri[len(f"{sqlite_server.url}/files/"):]
    assert json.loads(stored.read_text()) == {"a": 1}
    assert httpx.get(uri, timeout=10).status_code == 401

    answer = run_sdk(sqlite_server, tmp_path / "down", f"""
        import json
        from clearml import Task
        task = Task.get_task(task_id={tid!r})
        print(json.dumps({{"cfg": task.artifacts["cfg"].get()}}))
    """)
    assert answer["cfg"] == {"a": 1}


def test_raw_upload_download_delete(sqlite_server: ServerProcess, bearer: dict[str, str]) -> None:
    files = f"{sqlite_server.url}/files"
    path = f"/p/raw.{uuid.uuid4().hex}/artifacts/blob/blob.bin"
    body = bytes(range(256)) * 4096  # 1 MiB
    res = httpx.post(f"{files}/", files={path: (path, body, "application/octet-stream")}, headers=bearer, timeout=30)
    assert res.status_code == 200, res.text
    assert res.json() == [path.lstrip("/")]
    res = httpx.get(f"{files}{path}", headers=bearer, timeout=30)
    assert res.status_code == 200 and res.content == body
    assert res.headers["content-type"] == "application/octet-stream"
    head = httpx.head(f"{files}{path}", headers=bearer, timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(body)
    # Overwrite in place (POST to /files without the slash, as the SDK does), then delete.
    res = httpx.post(files, files={path: (path, b"second", "text/plain")}, headers=bearer, timeout=10)
    assert res.status_code == 200, res.text
    assert httpx.get(f"{files}{path}", headers=bearer, timeout=10).content == b"second"
    assert httpx.delete(f"{files}{path}", headers=bearer, timeout=10).status_code == 200
    assert httpx.get(f"{files}{path}", headers=bearer, timeout=10).status_code == 404
    assert httpx.delete(f"{files}{path}", headers=bearer, timeout=10).status_code == 404
    folder = sqlite_server.home / ".conveyor" / "files" / Path(path.lstrip("/")).parent
    assert list(folder.iterdir()) == []  # no temp files left behind


def test_raw_refusals(sqlite_server: ServerProcess, bearer: dict[str, str]) -> None:
    files = f"{sqlite_server.url}/files"
    upload = {"/p/x.json": ("/p/x.json", b"{}", "application/json")}
    assert httpx.post(f"{files}/", files=upload, timeout=10).status_code == 401
    refused = httpx.post(f"{files}/", files=upload, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert refused.status_code == 401
    assert httpx.delete(f"{files}/p/x.json", timeout=10).status_code == 401
    for bad in ("../escape.txt", "/p/../../escape.txt", "/.."):
        res = httpx.post(f"{files}/", files={bad: (bad, b"x", "text/plain")}, headers=bearer, timeout=10)
        assert res.status_code == 400, (bad, res.text)
    assert not (sqlite_server.home / ".conveyor" / "escape.txt").exists()
    assert httpx.get(f"{files}/%2E%2E/conveyor.db", headers=bearer, timeout=10).status_code == 400
    assert httpx.get(f"{files}/p/a%00b", headers=bearer, timeout=10).status_code == 400
    assert httpx.get(f"{files}/p/missing.json", headers=bearer, timeout=10).status_code == 404
    assert httpx.post(f"{files}/", content=b"{}", headers={**bearer, "Content-Type": "application/json"},
                      timeout=10).status_code == 400
    # A symlink inside the files dir that points outside is not followed.
    root = sqlite_server.home / ".conveyor" / "files"
    root.mkdir(parents=True, exist_ok=True)
    (root / "out").symlink_to(sqlite_server.home)
    assert httpx.get(f"{files}/out/clearml.conf", headers=bearer, timeout=10).status_code == 400
    res = httpx.post(f"{files}/", files={"out/new.txt": ("out/new.txt", b"x", "text/plain")}, headers=bearer,
                     timeout=10)
    assert res.status_code == 400 and not (sqlite_server.home / "new.txt").exists()
    # The API next to it still answers as before.
    assert httpx.get(f"{sqlite_server.url}/debug.ping", timeout=10).status_code == 200
