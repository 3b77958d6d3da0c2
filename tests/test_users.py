"""Users, roles and who may change what; the data dir that holds the signing key is private (SQLite and PostgreSQL).

Each test talks to a real `conveyor server`: an admin (the first-start credentials), users made with `users.create`,
and a worker that pulls someone else's task with its own credential."""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from _api import module_server, signing_key
from conftest import ServerProcess, pg_database, schema_at
from conveyor.client import ApiCallError, ApiClient, AuthError


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(request.param, tmp_path_factory.mktemp(f"users-{request.param}")) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(srv: ServerProcess) -> Iterator[ApiClient]:
    with srv.client() as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def refused(fn: Any, *args: Any) -> ApiCallError:
    with pytest.raises(ApiCallError) as info:
        fn(*args)
    return info.value


def new_user(srv: ServerProcess, admin: ApiClient, role: str = "user") -> tuple[str, str, ApiClient]:
    """(name, id, a client logged in with fresh credentials of that user)."""
    name = unique("alice-" if role == "user" else "root-")
    user_id = admin.call("users.create", {"name": name, "role": role})["id"]
    creds = admin.call("auth.create_credentials", {"user": name, "label": f"{name}'s laptop"})["credentials"]
    return name, user_id, ApiClient(srv.url, creds["access_key"], creds["secret_key"], max_retries=0)


def new_task(api: ApiClient, **fields: Any) -> str:
    return api.call("tasks.create", {"name": unique("t-"), "type": "training",
                                     "script": {"repository": "file:///tmp/r", "entry_point": "train.py"},
                                     **fields})["id"]


def task_of(api: ApiClient, task_id: str) -> dict[str, Any]:
    return api.call("tasks.get_by_id", {"task": task_id})["task"]


# --- users and roles --------------------------------------------------------------------------------------------------
def test_first_user_is_admin_and_users_have_roles(srv: ServerProcess, admin: ApiClient) -> None:
    me = admin.call("users.get_current_user")["user"]
    assert me["role"] == "admin" and admin.claims["identity"]["role"] == "admin"
    name, user_id, alice = new_user(srv, admin)
    with alice:
        me_too = alice.call("users.get_current_user")["user"]
        assert (me_too["id"], me_too["name"], me_too["role"]) == (user_id, name, "user")
        assert alice.claims["identity"]["user"] == user_id and alice.claims["identity"]["role"] == "user"
        assert alice.claims["identity"]["user_name"] == name
        listed = {u["name"]: u["role"] for u in alice.call("users.get_all")["users"]}
        assert listed[name] == "user" and listed[me["name"]] == "admin"
        err = refused(alice.call, "users.create", {"name": unique("mallory-"), "role": "admin"})
        assert err.code == 403 and "only an admin can create users" in err.msg
    err = refused(admin.call, "users.create", {"name": name.upper()})
    assert err.code == 400 and "already exists" in err.msg
    assert refused(admin.call, "users.create", {"name": unique("x-"), "role": "root"}).code == 400


def test_user_changes_only_own_tasks(srv: ServerProcess, admin: ApiClient) -> None:
    admin_name = admin.call("users.get_current_user")["user"]["name"]
    theirs = new_task(admin)
    queue = admin.call("queues.create", {"name": unique("q-")})["id"]
    name, user_id, alice = new_user(srv, admin)
    with alice:
        mine = new_task(alice)
        assert task_of(admin, mine)["user"] == user_id  # the owner is recorded
        assert task_of(alice, theirs)["id"] == theirs  # everyone reads everything
        refusals = {
            "abort": ("tasks.stop", {"task": theirs}),
            "edit": ("tasks.edit", {"task": theirs, "comment": "mine now"}),
            "delete": ("tasks.delete", {"task": theirs, "force": True}),
            "reset": ("tasks.reset", {"task": theirs, "force": True}),
            "enqueue": ("tasks.enqueue", {"task": theirs, "queue": queue}),
        }
        for verb, (endpoint, body) in refusals.items():
            err = refused(alice.call, endpoint, body)
            assert err.code == 403, (endpoint, err)
            assert err.msg == (f"task {theirs} belongs to {admin_name}; only its owner or an admin can {verb} it")
        for endpoint, body in (("tasks.set_requirements", {"task": theirs, "requirements": {"pip": "x"}}),
                               ("tasks.completed", {"task": theirs, "force": True}),
                               ("queues.add_task", {"queue": queue, "task": theirs}),
                               ("events.add_batch", {"requests": [{"task": theirs, "type": "log", "msg": "hi"}]})):
            assert refused(alice.call, endpoint, body).code == 403, endpoint
        untouched = task_of(admin, theirs)
        assert untouched["status"] == "created" and untouched["comment"] == "" and not untouched["script"].get(
            "requirements")
        assert admin.call("queues.get_by_id", {"queue": queue})["queue"]["entries"] == []
        assert admin.call("events.get_task_log", {"task": theirs})["events"] == []
        # Her own task: edit, enqueue anywhere, abort; clones of anyone's task are hers.
        alice.call("tasks.edit", {"task": mine, "comment": "ok"})
        alice.call("tasks.enqueue", {"task": mine, "queue": queue})
        alice.call("tasks.stop", {"task": mine})
        clone = alice.call("tasks.clone", {"task": theirs})["id"]
        assert task_of(admin, clone)["user"] == user_id
        # Queues are shared: only an admin changes or deletes one.
        assert refused(alice.call, "queues.delete", {"queue": queue, "force": True}).code == 403
        # An admin changes anyone's task.
        admin.call("tasks.edit", {"task": clone, "comment": "by the admin"})
        admin.call("tasks.delete", {"task": clone, "force": True})


def test_worker_reports_on_the_task_it_pulled(srv: ServerProcess, admin: ApiClient) -> None:
    """An agent running with bob's (role user) credential runs alice's task: what the agent sends is accepted for the
    task it pulled, and only for it."""
    _, _, alice = new_user(srv, admin)
    _, _, bob = new_user(srv, admin)
    queue = admin.call("queues.create", {"name": unique("q-")})["id"]
    with alice, bob:
        pulled, other = new_task(alice), new_task(alice)
        alice.call("tasks.enqueue", {"task": pulled, "queue": queue})
        assert refused(bob.call, "tasks.started", {"task": pulled, "force": True}).code == 403  # not pulled yet
        assert bob.call("queues.get_next_task", {"queue": queue})["entry"]["task"] == pulled
        # The agent's sequence (clearml-wire.md §3.4-3.7).
        bob.call("tasks.started", {"task": pulled, "force": True, "status_message": "pulled by agent"})
        bob.call("workers.status_report", {"worker": "box:0", "task": pulled, "queue": queue,
                                           "timestamp": int(time.time() * 1000)})
        bob.call("tasks.edit", {"task": pulled, "force": True, "script": {"version_num": "abc123"}})
        bob.call("tasks.set_requirements", {"task": pulled, "requirements": {"pip": "numpy==1.26\n"}})
        assert bob.call_lines("events.add_batch", [{"task": pulled, "type": "log", "msg": "training"}])["added"] == 1
        bob.call("tasks.ping", {"task": pulled})
        bob.call("tasks.completed", {"task": pulled, "force": True})
        done = task_of(alice, pulled)
        assert done["status"] == "completed" and done["script"]["version_num"] == "abc123"
        assert done["last_worker"] == "box:0"
        # Nothing else of alice's: neither her other task nor, after she resets it, the one it ran.
        for endpoint, body in (("tasks.stop", {"task": other}), ("tasks.edit", {"task": other, "comment": "x"}),
                               ("tasks.delete", {"task": pulled, "force": True})):
            assert refused(bob.call, endpoint, body).code == 403, endpoint
        alice.call("tasks.reset", {"task": pulled})
        assert refused(bob.call, "tasks.started", {"task": pulled, "force": True}).code == 403
        # A report naming a task it does not run does not make it that task's worker.
        bob.call("workers.status_report", {"worker": "box:1", "task": other, "timestamp": int(time.time() * 1000)})
        assert "last_worker" not in task_of(alice, other)


# --- credentials ------------------------------------------------------------------------------------------------------
def test_credentials_belong_to_users(srv: ServerProcess, admin: ApiClient) -> None:
    admin_key, _ = srv.credentials()
    name, user_id, alice = new_user(srv, admin)
    other, _, bob = new_user(srv, admin)
    with alice, bob:
        own = alice.call("auth.create_credentials", {"label": "ci"})["credentials"]
        err = refused(alice.call, "auth.create_credentials", {"user": other})
        assert err.code == 403 and "only an admin" in err.msg
        mine = {c["access_key"]: c for c in alice.call("auth.get_credentials")["credentials"]}
        assert own["access_key"] in mine and admin_key not in mine
        assert {c["user_name"] for c in mine.values()} == {name}
        # The admin sees everyone's, with whose they are, and revokes any.
        everyone = {c["access_key"]: c for c in admin.call("auth.get_credentials")["credentials"]}
        assert everyone[own["access_key"]]["user"] == user_id and admin_key in everyone
        assert refused(alice.call, "auth.revoke_credentials", {"access_key": admin_key}).code == 400
        admin.call("users.get_current_user")  # the admin's key still works
        admin.call("auth.revoke_credentials", {"access_key": own["access_key"]})
        with ApiClient(srv.url, own["access_key"], own["secret_key"], max_retries=0) as gone, \
                pytest.raises(AuthError):
            gone.login()


def test_forged_token_cannot_make_hidden_credentials(srv: ServerProcess, admin: ApiClient) -> None:
    """Item 8: a token signed with the (leaked) key for a made-up user used to create credentials that no listing
    showed and no revoke reached. Now a token acts as the credential it names, and the admin sees every key."""
    admin_key, _ = srv.credentials()
    now = int(time.time())
    forged = {"identity": {"user": uuid.uuid4().hex, "company": "x", "role": "admin", "user_name": "ghost"},
              "exp": now + 3600, "iat": now, "api_version": "2.31", "key": "NOSUCHKEY"}
    token = jwt.encode(forged, signing_key(srv), algorithm="HS256")
    with ApiClient(srv.url, token=token, max_retries=0) as ghost:
        with pytest.raises(ApiCallError) as info:
            ghost.call("auth.create_credentials", {"label": "hidden"})
        assert info.value.code == 401
    # With a real key in it, the token acts as that key's user whatever identity it claims.
    token = jwt.encode({**forged, "key": admin_key}, signing_key(srv), algorithm="HS256")
    with ApiClient(srv.url, token=token, max_retries=0) as ghost:
        made = ghost.call("auth.create_credentials", {"label": "not hidden"})["credentials"]["access_key"]
    listed = [c["access_key"] for c in admin.call("auth.get_credentials")["credentials"]]
    assert made in listed
    admin.call("auth.revoke_credentials", {"access_key": made})


# --- existing installs ------------------------------------------------------------------------------------------------
def _database_at_0002(url: str) -> None:
    schema_at(url, "0002")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_existing_install_migrates(kind: str, tmp_path: Path) -> None:
    """An install from before users: its user becomes the admin and owns every credential, also one made by a
    token for a user that does not exist."""
    from sqlalchemy import create_engine, text

    from conveyor.server.auth import hash_secret
    from conveyor.server.store.database import sqlite_url

    home = tmp_path / "home"
    with pg_database() if kind == "postgresql" else _nothing() as pg:
        url = pg or sqlite_url(home / ".conveyor")
        _database_at_0002(url)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        admin_id, ghost = uuid.uuid4().hex, uuid.uuid4().hex
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, created) VALUES (:id, 'Conveyor Admin', 1)"),
                         {"id": admin_id})
            for key, owner in (("OLDKEY", admin_id), ("GHOSTKEY", ghost)):
                conn.execute(text("INSERT INTO credentials (access_key, secret_hash, user_id, label, created) "
                                  "VALUES (:k, :h, :u, '', 2)"), {"k": key, "h": hash_secret("s3cret"), "u": owner})
        engine.dispose()
        server = ServerProcess(home, db=pg).start()
        try:
            for key in ("OLDKEY", "GHOSTKEY"):
                with ApiClient(server.url, key, "s3cret", max_retries=0) as client:
                    me = client.call("users.get_current_user")["user"]
                    assert (me["id"], me["role"]) == (admin_id, "admin")
            with ApiClient(server.url, "OLDKEY", "s3cret", max_retries=0) as client:
                listed = {c["access_key"]: c["user"] for c in client.call("auth.get_credentials")["credentials"]}
                assert listed == {"OLDKEY": admin_id, "GHOSTKEY": admin_id}
                assert [u["role"] for u in client.call("users.get_all")["users"]] == ["admin"]
            assert "First start" not in server.output()  # no second set of first-start credentials
        finally:
            server.stop()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- the data dir -----------------------------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_is_private(sqlite_server: ServerProcess) -> None:
    """Item 8: the database holds the token signing key; no other local user may read it."""
    data = sqlite_server.home / ".conveyor"
    with sqlite_server.client() as client:
        client.call("tasks.create", {"name": "write something", "type": "training"})
    assert _mode(data) == 0o700
    assert _mode(data / "files") == 0o700
    db_files = [data / name for name in ("conveyor.db", "conveyor.db-wal", "conveyor.db-shm")]
    assert all(p.exists() for p in db_files)
    assert {p.name: _mode(p) for p in db_files} == {p.name: 0o600 for p in db_files}


def test_existing_data_dir_is_tightened_on_start(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home").start()
    server.stop()
    data = server.home / ".conveyor"
    key_file = data / "signing.key"
    key_file.write_text("k")
    loose = {data: 0o755, data / "files": 0o775, data / "conveyor.db": 0o644, key_file: 0o644}
    for path, mode in loose.items():
        path.chmod(mode)
    server.start()
    try:
        assert {p: _mode(p) for p in loose} == {data: 0o700, data / "files": 0o700, data / "conveyor.db": 0o600,
                                                key_file: 0o600}
        line = next(li for li in server.output().splitlines() if "made the server's data private" in li)
        assert f"{data / 'conveyor.db'} 644->600" in line and f"{data} 755->700" in line
        with server.client() as client:  # and it still works
            assert client.call("users.get_current_user")["user"]["role"] == "admin"
    finally:
        server.stop()
