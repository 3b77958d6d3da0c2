"""SQLite: a trigram index of task names (FTS5, store/name_index.py), so that a name search reads the index instead
of every name (a name found in no task took 0.9 s at 1,000,000 tasks, and the UI's search often ran past its 1 s
limit). Where SQLite lacks FTS5's trigram tokenizer (before 3.34), the upgrade goes on without it and says so;
store/name_index.py uses the index only while its table and triggers are all there.
Existing tasks are indexed in the upgrade's transaction.

Revision ID: 0010
Revises: 0009
"""
import logging

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

log = logging.getLogger("conveyor.server")
FOLDS = ((304, "i"), (305, "i"), (8490, "k"), (383, "s"))  # patterns.NON_ASCII_FOLDS (a test keeps them equal)


def _folded(name: str) -> str:
    """The name as the index holds it: the four characters that a search's i, k or s also matches (patterns.py's
    NON_ASCII_FOLDS: dotted and dotless i, the Kelvin sign, the long s) as those letters, which FTS5's own case
    folding leaves apart; the index is then read with the letters themselves."""
    for code, letter in FOLDS:
        name = f"replace({name}, char({code}), '{letter}')"
    return name


STATEMENTS = [
    "CREATE TABLE task_name_keys (key INTEGER PRIMARY KEY, id VARCHAR(64) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE task_names USING fts5(name, tokenize = 'trigram')",
    "INSERT INTO task_name_keys (id) SELECT id FROM tasks",
    f"INSERT INTO task_names (rowid, name) SELECT k.key, {_folded('t.name')} FROM tasks t "
    "JOIN task_name_keys k ON k.id = t.id",
    "CREATE TRIGGER task_name_added AFTER INSERT ON tasks BEGIN "
    "INSERT INTO task_name_keys (id) VALUES (new.id); "
    "INSERT INTO task_names (rowid, name) VALUES ((SELECT key FROM task_name_keys WHERE id = new.id), "
    f"{_folded('new.name')}); END",
    # Every save of a task sets its name: only a change of it touches the index.
    "CREATE TRIGGER task_name_changed AFTER UPDATE OF name ON tasks WHEN old.name IS NOT new.name BEGIN "
    f"UPDATE task_names SET name = {_folded('new.name')} "
    "WHERE rowid = (SELECT key FROM task_name_keys WHERE id = new.id); END",
    "CREATE TRIGGER task_name_removed AFTER DELETE ON tasks BEGIN "
    "DELETE FROM task_names WHERE rowid = (SELECT key FROM task_name_keys WHERE id = old.id); "
    "DELETE FROM task_name_keys WHERE id = old.id; END",
]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    try:  # only a missing tokenizer is skipped: any other failure (a full disk) fails the upgrade, to run again
        with bind.begin_nested():
            bind.execute(sa.text("CREATE VIRTUAL TABLE temp.trigram_probe USING fts5(x, tokenize = 'trigram')"))
            bind.execute(sa.text("DROP TABLE temp.trigram_probe"))
    except sa.exc.OperationalError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        log.warning("no trigram index on task names: SQLite %s has no FTS5 trigram tokenizer (%s; 3.34 and newer "
                    "have it): a name search reads every name",
                    bind.exec_driver_sql("SELECT sqlite_version()").scalar(), reason)
        return
    for statement in STATEMENTS:
        bind.execute(sa.text(statement))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in ("task_name_added", "task_name_changed", "task_name_removed"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS task_names")
    op.execute("DROP TABLE IF EXISTS task_name_keys")
