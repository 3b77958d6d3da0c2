"""PostgreSQL: a trigram index on task names, so that a name search (the UI's search box: a regex, narrowed first
by an ILIKE on the text every match holds) reads the index instead of every name (a name found in no task took
0.6 s at 1,000,000 tasks). Where the pg_trgm extension or the index cannot be created (the extension ships with
PostgreSQL, and since PostgreSQL 13 the database's owner may create it), the upgrade goes on without the index and
logs the statements that add it. The index is built in the upgrade's transaction: task writes wait until it is done.

Revision ID: 0007
Revises: 0006
"""
import logging

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("conveyor.server")


INDEX = "CREATE INDEX IF NOT EXISTS ix_tasks_name_trgm ON tasks USING gin (name gin_trgm_ops)"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a savepoint: what fails here leaves the upgrade's transaction as it was
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
            bind.execute(sa.text(INDEX))
    except sa.exc.DBAPIError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        log.warning("no trigram index on task names (%s): a name search reads every name. To add it, a superuser "
                    "runs in this database: CREATE EXTENSION IF NOT EXISTS pg_trgm; %s", reason, INDEX)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_tasks_name_trgm", "tasks", if_exists=True)
