"""Users with roles; tasks remember which credential pulled them.

Every credential used to act as one admin: existing users become admins, and every credential (also one whose
user is unknown, as a token signed with a leaked key could create) belongs to the first user, so that it is listed
and revocable.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="user"))
        batch.create_index("ux_users_name", ["name"], unique=True)
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("runner", sa.String(length=128), nullable=True))
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE users SET role = 'admin'"))
    first = conn.execute(sa.text("SELECT id FROM users ORDER BY created LIMIT 1")).first()
    if first is not None:
        conn.execute(sa.text("UPDATE credentials SET user_id = :u WHERE user_id <> :u"), {"u": first[0]})


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("runner")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ux_users_name")
        batch.drop_column("role")
