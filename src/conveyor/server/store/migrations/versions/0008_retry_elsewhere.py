"""Queue entries can name a worker to skip: a task put back by a retry after an infrastructure failure goes to
another worker first (conveyor.server.retry_elsewhere_sec), not straight back to the one it failed on, which the
task's `puller` (the worker that pulled its run) names.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queue_entries") as batch:
        batch.add_column(sa.Column("avoid", sa.String(length=512), nullable=True))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("puller", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("puller")
    with op.batch_alter_table("queue_entries") as batch:
        batch.drop_column("avoid")
