"""Idempotent event batches: an event may carry a client id; a retried batch adds each event once.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("client_id", sa.String(length=128), nullable=True))
        batch.create_index("ux_events_task_client_id", ["task", "client_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ux_events_task_client_id")
        batch.drop_column("client_id")
