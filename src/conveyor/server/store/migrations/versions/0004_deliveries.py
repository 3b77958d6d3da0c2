"""Deliveries: popped entries whose task has not started yet, so that a lost answer puts the task back.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("task", sa.String(length=64), primary_key=True),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("added", sa.Float(), nullable=False),
        sa.Column("delivered", sa.Float(), nullable=False),
    )
    op.create_index("ix_deliveries_delivered", "deliveries", ["delivered"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_delivered", "deliveries")
    op.drop_table("deliveries")
