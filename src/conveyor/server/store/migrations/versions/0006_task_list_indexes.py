"""Indexes for the task list on a big database: the UI's filters (status, project) in its order (newest first), and
the projects page's counts of tasks by status read from indexes alone.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ARCHIVED = sa.text("system_tags LIKE '%\"archived\"%'")  # as schema.ARCHIVED


def upgrade() -> None:
    op.drop_index("ix_tasks_status", "tasks")
    op.drop_index("ix_tasks_project", "tasks")
    op.create_index("ix_tasks_status_created", "tasks", ["status", "created"])
    op.create_index("ix_tasks_project_created", "tasks", ["project", "created"])
    op.create_index("ix_tasks_project_status", "tasks", ["project", "status"])
    op.create_index("ix_tasks_archived", "tasks", ["project", "status"], sqlite_where=ARCHIVED,
                    postgresql_where=ARCHIVED)


def downgrade() -> None:
    op.drop_index("ix_tasks_archived", "tasks")
    op.drop_index("ix_tasks_project_status", "tasks")
    op.drop_index("ix_tasks_project_created", "tasks")
    op.drop_index("ix_tasks_status_created", "tasks")
    op.create_index("ix_tasks_project", "tasks", ["project"])
    op.create_index("ix_tasks_status", "tasks", ["status"])
