"""The LIKE that runs before a name regex (patterns.like_prefilter) must never drop a name the regex matches: checked
against SQLite's own LIKE, on names chosen to trip it (case, LIKE's wildcards, characters that fold to ASCII)."""

from __future__ import annotations

import importlib.util
import sqlite3
from types import ModuleType

import pytest
import regex

from conveyor.server.store.database import MIGRATIONS
from conveyor.server.store.name_index import index_pattern
from conveyor.server.store.patterns import NON_ASCII_FOLDS, like_prefilter

NAMES = ["ResNet-50 run 3", "resnet", "RESNET_v2", "res net", "exp 1.2", "exp 1x2", "100% done", "100 done",
         "a_b", "axb", "back\\slash", "\u212aubernetes job", "kubernetes job", "me\u017fh", "mesh", "\u0130mage",
         "image", "t\u00fcr", "tur", "", "mnist (baseline)", "ab+c", "abbbc"]
PATTERNS = ["resnet", "^resnet$", "ResNet-50", "res.net", "exp 1\\.2", "100% done", "a_b", "back\\\\slash",
            "kubernetes", "mesh", "image", "t.r", "^mnist \\(baseline\\)$", "ab+c", "ab\\+c", "xyz-nothing",
            "(?i)RESNET", "net$", "^res"]


def like(conn: sqlite3.Connection, pattern: str, name: str) -> bool:
    return bool(conn.execute("SELECT ? LIKE ? ESCAPE '\\'", (name, pattern)).fetchone()[0])


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_prefilter_keeps_every_name_the_regex_matches(pattern: str) -> None:
    conn = sqlite3.connect(":memory:")
    prefilter = like_prefilter(pattern)
    for name in NAMES:
        if regex.search(f"(?i){pattern}", name, flags=regex.VERSION0) and prefilter is not None:
            assert like(conn, prefilter, name), f"{prefilter!r} drops {name!r}, which {pattern!r} matches"


@pytest.mark.parametrize(("pattern", "expected"), [
    ("resnet", "%re_net%"),  # s: the long s folds to it
    ("^exp 1\\.2$", "%exp 1.2%"),
    ("100% done", "%100\\% done%"),
    ("ab+c", "%a%"),  # b+ is a repetition item: the runs are "a" and "c"
    ("foo|bar", None),  # an alternation: no text every match holds
    ("(a|a)+", None),
    ("x*", None),
    ("[", None),  # not a pattern
])
def test_the_prefilter_is_the_longest_text_every_match_holds(pattern: str, expected: str | None) -> None:
    assert like_prefilter(pattern) == expected


def test_a_word_that_matches_nothing_is_dropped_by_the_prefilter_alone() -> None:
    conn = sqlite3.connect(":memory:")
    prefilter = like_prefilter("xyz-nothing")
    assert prefilter is not None and not any(like(conn, prefilter, name) for name in NAMES)


def _migration_0010() -> ModuleType:
    path = MIGRATIONS / "versions" / "0010_sqlite_task_name_trigrams.py"
    spec = importlib.util.spec_from_file_location("migration_0010", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_name_index_keeps_every_name_the_regex_matches() -> None:
    """SQLite's trigram index (migration 0010, read as query.name_filter reads it) holds names with the non-ASCII
    letters a search's i, k or s matches folded to them: its pattern never drops a name the regex matches."""
    migration = _migration_0010()
    assert {chr(code): letter for code, letter in migration.FOLDS} == NON_ASCII_FOLDS
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE tasks (id VARCHAR(64) PRIMARY KEY, name VARCHAR(512))")
    for statement in migration.STATEMENTS:
        conn.execute(statement)
    conn.executemany("INSERT INTO tasks (id, name) VALUES (?, ?)", [(f"t{n}", name) for n, name in enumerate(NAMES)])
    used = 0
    for pattern in PATTERNS:
        indexed = index_pattern(like_prefilter(pattern, folds=False) or "")
        if indexed is None:
            continue
        used += 1
        kept = {row[0] for row in conn.execute(
            "SELECT t.name FROM tasks t JOIN task_name_keys k ON k.id = t.id WHERE k.key IN "
            "(SELECT rowid FROM task_names WHERE name LIKE ?)", [indexed])}
        for name in NAMES:
            if regex.search(f"(?i){pattern}", name, flags=regex.VERSION0):
                assert name in kept, f"{indexed!r} drops {name!r}, which {pattern!r} matches"
    assert used >= 10  # most of these patterns are served by the index
