"""Name patterns (`name` in `get_all` calls): Python-syntax regexes whose evaluation is bounded in time.

SQLite evaluates REGEXP by calling back into Python once per row. Python's `re` backtracks without limit, so one
pattern such as `^(a|a)+$` against a 28-character name runs for minutes. We evaluate with the `regex` package
instead: it reads the same syntax as `re` (the agent's `re.escape`d names, the SDK's anchored ones, lookarounds and
back-references a user may type), defuses many nested repetitions such as `^(a+)+$` outright, and takes a timeout
for the rest. `google-re2` would be linear-time but rejects back-references and lookarounds that `re` accepts, so
a filter that works against a ClearML server could fail here. PostgreSQL evaluates with its own engine, bounded by
`statement_timeout` (see `query.fetch`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import regex

try:  # the parser of `re` itself (3.11 and newer; the deprecated sre_ modules before)
    import re._constants as re_constants  # type: ignore[import-not-found]
    import re._parser as re_parser  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as re_constants
    import sre_parse as re_parser

from conveyor.errors import UserError

_budget = threading.local()  # per thread: the deadline of the query running there, and whether it was passed


class PatternTooExpensive(UserError):
    """A name pattern ran past its deadline: the user's pattern backtracks too much (raised inside SQLite's REGEXP,
    it aborts the statement; `query.fetch` answers it as a 400)."""


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile like `re` (VERSION0); raises `regex.error` on a malformed pattern."""
    return regex.compile(pattern, regex.VERSION0)


# Letters whose case-insensitive match also takes a non-ASCII character (K: the Kelvin sign, s: the long s, i: the
# dotted capital I and the dotless i): in a LIKE they become `_`, any one character, so that LIKE never drops a name
# the regex takes.
_UNICODE_FOLDS = frozenset("iksIKS")
NON_ASCII_FOLDS = {"\u0130": "i", "\u0131": "i", "\u212a": "k", "\u017f": "s"}  # the characters those letters take


@lru_cache(maxsize=256)
def like_prefilter(pattern: str, folds: bool = True) -> str | None:
    """A LIKE pattern (escaped with backslash) that every name `pattern` matches case-insensitively also matches, or
    None. The database runs LIKE in its own code, so the regex (a Python call per row on SQLite) runs only on the
    names that pass it: a search for a word that matches nothing reads a million names in a fraction of the time.
    It is the longest run of plain ASCII characters at the top level of the pattern (not inside a group, an
    alternation or a repetition); a pattern that `re` cannot parse has none. `folds=False` keeps the letters that
    also match a non-ASCII one (for text where those are folded already: SQLite's name index, name_index.py)."""
    try:
        items = list(re_parser.parse(pattern))
    except (re.error, OverflowError, RecursionError):
        return None
    runs: list[list[str]] = [[]]
    for op, value in items:
        if op is re_constants.LITERAL and value < 128 and chr(value).isprintable():
            char = chr(value)
            runs[-1].append("_" if folds and char in _UNICODE_FOLDS else char.replace("\\", "\\\\")
                            .replace("%", "\\%").replace("_", "\\_"))
        elif op is not re_constants.AT:  # an anchor ends no run: ^abc$ holds "abc"
            runs.append([])
    best = max(runs, key=lambda run: sum(part != "_" for part in run))
    if not any(part != "_" for part in best):
        return None
    return "%" + "".join(best) + "%"


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every SQLite REGEXP this thread evaluates until the block ends; `exceeded()` tells if it was hit."""
    _budget.deadline = time.monotonic() + seconds
    _budget.exceeded = False
    try:
        yield
    finally:
        _budget.deadline = None


def exceeded() -> bool:
    return bool(getattr(_budget, "exceeded", False))


def sqlite_regexp(pattern: str, value: str | None) -> bool | None:
    """SQLite's `value REGEXP pattern`. Past the thread's deadline it raises, which aborts the statement."""
    if value is None:
        return None
    limit = getattr(_budget, "deadline", None)
    timeout = None if limit is None else limit - time.monotonic()
    try:
        if timeout is not None and timeout <= 0:
            raise TimeoutError
        return compile_pattern(pattern).search(value, timeout=timeout) is not None
    except TimeoutError:
        _budget.exceeded = True
        raise PatternTooExpensive(f"The name pattern {pattern!r} is too expensive",
                                  hint="use a simpler pattern") from None
