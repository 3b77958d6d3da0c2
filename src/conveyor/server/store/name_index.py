"""SQLite's trigram index of task names (an FTS5 table, migration 0010): a name search (the UI's search box) reads
the index rather than every name; PostgreSQL's is pg_trgm (migration 0007).

FTS5 rows are numbered, and an FTS table that refers to the task table by SQLite's own rowid would lose track of it
when `VACUUM` renumbers the rowids of a table whose key is text: `task_name_keys` gives each task a number of its own
(an INTEGER PRIMARY KEY, which VACUUM keeps), and the index is numbered by it. Triggers keep both in step with the
task table, in the transaction that changes it. A migration that rebuilds the task table (Alembic's
`batch_alter_table`, on SQLite a copy) drops those triggers: it must create them again (migration 0010's STATEMENTS).
"""

from __future__ import annotations

from sqlalchemy import Select, column, func, select, table, text
from sqlalchemy.engine import Connection

KEYS = table("task_name_keys", column("key"), column("id"))
NAMES = table("task_names", column("rowid"), column("name"))
TRIGRAM = 3  # the index answers a LIKE whose pattern holds a run of at least this many plain characters
# Up to this many names matching, a search reads its tasks from the index and sorts them (a few ms); with more, the
# list's own order reaches a page of matches after reading fewer rows than that.
FEW = 1000
TRIGGERS = ("task_name_added", "task_name_changed", "task_name_removed")  # migration 0010's


def present(conn: Connection) -> bool:
    """Whether the index exists and is kept up to date: an SQLite without FTS5's trigram tokenizer has none, and a
    rebuild of the task table drops its triggers (a search would then miss the tasks made since). Either way a
    search reads every name."""
    found = {name for (name,) in conn.execute(text(
        "SELECT name FROM sqlite_master WHERE (type = 'table' AND name IN ('task_names', 'task_name_keys')) "
        "OR (type = 'trigger' AND tbl_name = 'tasks')"))}
    return {"task_names", "task_name_keys", *TRIGGERS} <= found


def index_pattern(like: str) -> str | None:
    """The search's LIKE prefilter (escaped with backslash) as a pattern the index can answer, which takes no ESCAPE
    clause: an escaped `%` or `_` becomes `_` (any one character), so that it matches all the prefilter does, and
    more, which the prefilter and the regex then drop. None when no run of plain characters is long enough."""
    out: list[str] = []
    run = longest = 0
    chars = iter(like)
    for char in chars:
        if char == "\\":
            char = next(chars, "\\")
            plain = char not in "%_"
            out.append(char if plain else "_")
        else:
            plain = char not in "%_"
            out.append(char)
        run = run + 1 if plain else 0
        longest = max(longest, run)
    return "".join(out) if longest >= TRIGRAM else None


def tasks_named_like(pattern: str) -> Select[tuple[str]]:
    """The ids of the tasks whose name the index matches with `pattern` (case-insensitively)."""
    found = select(NAMES.c.rowid).where(NAMES.c.name.like(pattern))
    return select(KEYS.c.id).where(KEYS.c.key.in_(found))


def few_tasks_named_like(conn: Connection, pattern: str) -> bool:
    """Whether at most FEW task names match `pattern` in the index (it stops counting there)."""
    found = select(NAMES.c.rowid).where(NAMES.c.name.like(pattern)).limit(FEW + 1).subquery()
    return int(conn.execute(select(func.count()).select_from(found)).scalar_one()) <= FEW
