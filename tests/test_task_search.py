"""The task list's name search on PostgreSQL: a trigram index (migration 0007) serves it, so that a name found in no
task does not read every name (0.6 s at 1,000,000 tasks before, bench/server.py --only tasks)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from conftest import ServerProcess, pg_database


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
