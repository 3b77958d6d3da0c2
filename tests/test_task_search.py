"""The task list's name search reads a trigram index, so that a name found in no task does not read every name:
PostgreSQL's pg_trgm (migration 0007; 0.6 s at 1,000,000 tasks before, bench/server.py --only tasks) and SQLite's
FTS5 (migration 0010; 0.9 s there, often past the search's 1 s limit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from conftest import ServerProcess, pg_database, schema_at


def test_a_name_search_on_postgresql_reads_the_trigram_index(tmp_path: Path) -> None:
    with pg_database() as url:
        server = ServerProcess(tmp_path / "home", db=url).start()
        try:
            client = server.client()
            names = [f"resnet-{i}" for i in range(30)] + [f"bert-{i}" for i in range(30)] + ["ResNet Big"]
            for name in names:
                client.call("tasks.create", {"name": name, "type": "training"})

            def found(pattern: str) -> list[str]:
                return sorted(t["name"] for t in client.call("tasks.get_all", {"name": pattern,
                                                                                "only_fields": ["name"]})["tasks"])

            assert found("net big") == ["ResNet Big"]  # case-insensitive, as the UI's search box is
            assert found("^resnet-1") == sorted(["resnet-1"] + [f"resnet-1{i}" for i in range(10)])
            assert found("no such task") == []
        finally:
            server.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            indexes = {row[0]: row[1] for row in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks'")}
            assert "gin_trgm_ops" in indexes.get("ix_tasks_name_trgm", ""), indexes
            # the search's own narrowing (an ILIKE on what every match holds) is answered from it
            conn.execute("SET enable_seqscan = off")
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN SELECT id FROM tasks WHERE name ILIKE '%no such task%' AND name ~ '(?i)no such task'"))
            assert "ix_tasks_name_trgm" in plan, plan


def test_without_the_right_to_create_pg_trgm_the_server_starts_and_says_how_to_add_the_index(tmp_path: Path) -> None:
    """A role that may create tables but not extensions (a managed database's app user): the upgrade goes on without
    the index, logs the statements that add it, and the search still answers."""
    role = "conveyor_test_no_ext"
    with pg_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN")
            conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        parts = urlsplit(url)
        limited = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
        server = ServerProcess(tmp_path / "home", db=limited).start()
        try:
            client = server.client()
            client.call("tasks.create", {"name": "resnet-1", "type": "training"})
            assert [t["name"] for t in client.call("tasks.get_all", {"name": "resnet"})["tasks"]] == ["resnet-1"]
            assert "CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX IF NOT EXISTS ix_tasks_name_trgm" \
                in server.output()
        finally:
            server.stop()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP OWNED BY conveyor_test_no_ext")
                conn.execute(f"DROP ROLE {role}")


def test_a_name_search_on_sqlite_reads_the_trigram_index_through_renames_deletes_vacuum_and_upgrades(
        tmp_path: Path) -> None:
    db_file = tmp_path / "tasks.db"
    server = ServerProcess(tmp_path / "home", db=f"sqlite:///{db_file}").start()
    try:
        client = server.client()
        names = [f"resnet-{i}" for i in range(30)] + [f"bert_{i}" for i in range(30)] + ["ResNet Big", "gpt 100%",
                                                                                         "\u212aelvin-mnist"]
        ids = {name: client.call("tasks.create", {"name": name, "type": "training"})["id"] for name in names}

        def found(pattern: str) -> list[str]:
            return sorted(t["name"] for t in client.call("tasks.get_all", {"name": pattern,
                                                                            "only_fields": ["name"]})["tasks"])

        def check() -> None:
            assert found("net big") == ["ResNet Big"]  # case-insensitive, as the UI's search box is
            assert found("^resnet-1") == sorted(["resnet-1"] + [f"resnet-1{i}" for i in range(10)])
            assert found("^bert_2$") == ["bert_2"]  # a `_` and a `%` are plain characters in a name search
            assert found("t 100%") == ["gpt 100%"]
            assert found("no such task") == []
            # a search's k also matches the Kelvin sign, as the regex does (and "mnist" reads the index too)
            assert found("kelvin-mnist") == found("mnist") == ["\u212aelvin-mnist"]

        check()
        client.call("tasks.edit", {"task": ids["bert_3"], "name": "roberta large"})
        client.call("tasks.edit", {"task": ids["bert_4"], "name": "long \u017fcale"})
        assert found("long scale") == ["long \u017fcale"]  # the long s, which a search's s matches
        client.call("tasks.delete", {"task": ids["resnet-7"]})
        assert found("berta lar") == ["roberta large"] and found("bert_3") == []
        assert found("resnet-7") == []
    finally:
        server.stop()

    # VACUUM renumbers the task table's rows: the index keeps its own numbers
    with sqlite3.connect(db_file) as conn:
        conn.execute("VACUUM")
        plan = " ".join(str(row) for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE id IN (SELECT id FROM task_name_keys WHERE key IN "
            "(SELECT rowid FROM task_names WHERE name LIKE '%no such task%'))"))
    assert "VIRTUAL TABLE INDEX 0:L" in plan, plan  # the LIKE is answered from the trigram index
    server.start()
    try:
        assert found("net big") == ["ResNet Big"] and found("berta lar") == ["roberta large"]
        assert found("resnet-7") == []
    finally:
        server.stop()

    # an install from before the index: the upgrade indexes the tasks it holds
    schema_at(f"sqlite:///{db_file}", "0009", down=True)
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'task_name%'").fetchone() == (0,)
    server.start()
    try:
        check()
        # the search reads the index: a name the index lost is no longer found
        with sqlite3.connect(db_file) as conn:
            conn.execute("DELETE FROM task_names WHERE rowid = (SELECT key FROM task_name_keys WHERE id = ?)",
                         [ids["ResNet Big"]])
        assert found("net big") == []
    finally:
        server.stop()

    # a task table rebuilt without the index's triggers: the search reads every name again, missing nothing
    with sqlite3.connect(db_file) as conn:
        conn.execute("DROP TRIGGER task_name_added")
    server.start()
    try:
        client.call("tasks.create", {"name": "fresh-model", "type": "training"})
        assert found("sh-mod") == ["fresh-model"]
        assert found("net big") == ["ResNet Big"]
    finally:
        server.stop()
