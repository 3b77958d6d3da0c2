"""Down-sampled worker stats and sampled queue metrics: the history behind the Orchestration charts.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_stats_rollup",
        sa.Column("worker", sa.String(length=512), primary_key=True),
        sa.Column("resolution", sa.Integer(), primary_key=True),
        sa.Column("bucket", sa.Float(), primary_key=True),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("stats", sa.Text(), nullable=False),
    )
    op.create_index("ix_worker_stats_rollup_time", "worker_stats_rollup", ["resolution", "bucket"])
    op.create_table(
        "queue_metrics",
        sa.Column("queue", sa.String(length=64), primary_key=True),
        sa.Column("resolution", sa.Integer(), primary_key=True),
        sa.Column("slot", sa.BigInteger(), primary_key=True),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("avg_waiting", sa.Float(), nullable=False),
    )
    op.create_index("ix_queue_metrics_time", "queue_metrics", ["resolution", "slot"])


def downgrade() -> None:
    op.drop_index("ix_queue_metrics_time", "queue_metrics")
    op.drop_table("queue_metrics")
    op.drop_index("ix_worker_stats_rollup_time", "worker_stats_rollup")
    op.drop_table("worker_stats_rollup")
