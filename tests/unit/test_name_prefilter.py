"""The LIKE that runs before a name regex (patterns.like_prefilter) must never drop a name the regex matches: checked
against SQLite's own LIKE, on names chosen to trip it (case, LIKE's wildcards, characters that fold to ASCII)."""

from __future__ import annotations

import sqlite3

import pytest
import regex

from conveyor.server.store.patterns import like_prefilter

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
