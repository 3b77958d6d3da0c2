"""PostgreSQL: a trigram index on task names, so that a name search (the UI's search box: a regex, narrowed first
by an ILIKE on the text every match holds) reads the index instead of every name (a name found in no task took
0.6 s at 1,000,000 tasks). Where the pg_trgm extension cannot be created (it ships with PostgreSQL, and since
PostgreSQL 13 the database's owner may create it), the upgrade goes on without the index and says so.

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


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        log.warning("no trigram index on task names (%s): name searches read every name; a superuser can run "
                    "CREATE EXTENSION pg_trgm in this database, and the next upgrade adds the index", reason)
        return
    op.create_index("ix_tasks_name_trgm", "tasks", ["name"], postgresql_using="gin",
                    postgresql_ops={"name": "gin_trgm_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_tasks_name_trgm", "tasks", if_exists=True)
