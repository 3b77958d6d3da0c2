"""A delivery keeps its entry's `avoid` (a retry's hold on the worker the task failed on), so that a task put back
after its pop (by a worker that stopped taking work, or by the sweep of deliveries nobody acknowledged) is held back
from that worker as long as it was before.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("avoid", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("avoid")
