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

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import regex

from conveyor.errors import UserError

_budget = threading.local()  # per thread: the deadline of the query running there, and whether it was passed


class PatternTooExpensive(UserError):
    """A name pattern ran past its deadline: the user's pattern backtracks too much (raised inside SQLite's REGEXP,
    it aborts the statement; `query.fetch` answers it as a 400)."""


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile like `re` (VERSION0); raises `regex.error` on a malformed pattern."""
    return regex.compile(pattern, regex.VERSION0)


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
