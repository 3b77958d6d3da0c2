"""initial schema

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('credentials',
    sa.Column('access_key', sa.String(length=128), nullable=False),
    sa.Column('secret_hash', sa.String(length=128), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=512), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('last_used', sa.Float(), nullable=True),
    sa.Column('revoked', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('access_key')
    )
    op.create_table('events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('timestamp', sa.BigInteger(), nullable=False),
    sa.Column('iter', sa.BigInteger(), nullable=True),
    sa.Column('metric', sa.String(length=512), nullable=True),
    sa.Column('variant', sa.String(length=512), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('level', sa.String(length=16), nullable=True),
    sa.Column('worker', sa.String(length=512), nullable=True),
    sa.Column('msg', sa.Text(), nullable=True),
    sa.Column('doc', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_task_type', ['task', 'type', 'seq'], unique=False)

    op.create_table('meta',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('projects',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('last_update', sa.Float(), nullable=False),
    sa.Column('system_tags', sa.Text(), nullable=False),
    sa.Column('doc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_projects_name'), ['name'], unique=False)

    op.create_table('queue_entries',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('queue', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('added', sa.Float(), nullable=False),
    sa.Column('position', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('queue_entries', schema=None) as batch_op:
        batch_op.create_index('ix_queue_entries_order', ['queue', 'position', 'seq'], unique=False)
        batch_op.create_index('ix_queue_entries_task', ['task'], unique=False)

    op.create_table('queues',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('last_update', sa.Float(), nullable=False),
    sa.Column('tags', sa.Text(), nullable=False),
    sa.Column('system_tags', sa.Text(), nullable=False),
    sa.Column('doc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('queues', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_queues_name'), ['name'], unique=False)

    op.create_table('runtime_properties',
    sa.Column('worker', sa.String(length=512), nullable=False),
    sa.Column('key', sa.String(length=256), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('expires', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('worker', 'key')
    )
    op.create_table('tasks',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=64), nullable=True),
    sa.Column('parent', sa.String(length=64), nullable=True),
    sa.Column('user_id', sa.String(length=64), nullable=True),
    sa.Column('queue', sa.String(length=64), nullable=True),
    sa.Column('last_worker', sa.String(length=512), nullable=True),
    sa.Column('tags', sa.Text(), nullable=False),
    sa.Column('system_tags', sa.Text(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('last_update', sa.Float(), nullable=False),
    sa.Column('started', sa.Float(), nullable=True),
    sa.Column('completed', sa.Float(), nullable=True),
    sa.Column('status_changed', sa.Float(), nullable=True),
    sa.Column('last_iteration', sa.BigInteger(), nullable=False),
    sa.Column('doc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_created', ['created'], unique=False)
        batch_op.create_index('ix_tasks_last_update', ['last_update'], unique=False)
        batch_op.create_index('ix_tasks_name', ['name'], unique=False)
        batch_op.create_index('ix_tasks_project', ['project'], unique=False)
        batch_op.create_index('ix_tasks_status', ['status'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('worker_stats',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('worker', sa.String(length=512), nullable=False),
    sa.Column('timestamp', sa.Float(), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=True),
    sa.Column('stats', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('worker_stats', schema=None) as batch_op:
        batch_op.create_index('ix_worker_stats_time', ['timestamp'], unique=False)
        batch_op.create_index('ix_worker_stats_worker', ['worker', 'seq'], unique=False)

    op.create_table('workers',
    sa.Column('id', sa.String(length=512), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('register_time', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('timeout', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=True),
    sa.Column('queue', sa.String(length=64), nullable=True),
    sa.Column('doc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    


def downgrade() -> None:
    
    op.drop_table('workers')
    with op.batch_alter_table('worker_stats', schema=None) as batch_op:
        batch_op.drop_index('ix_worker_stats_worker')
        batch_op.drop_index('ix_worker_stats_time')

    op.drop_table('worker_stats')
    op.drop_table('users')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_status')
        batch_op.drop_index('ix_tasks_project')
        batch_op.drop_index('ix_tasks_name')
        batch_op.drop_index('ix_tasks_last_update')
        batch_op.drop_index('ix_tasks_created')

    op.drop_table('tasks')
    op.drop_table('runtime_properties')
    with op.batch_alter_table('queues', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_queues_name'))

    op.drop_table('queues')
    with op.batch_alter_table('queue_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_queue_entries_task')
        batch_op.drop_index('ix_queue_entries_order')

    op.drop_table('queue_entries')
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_projects_name'))

    op.drop_table('projects')
    op.drop_table('meta')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_task_type')

    op.drop_table('events')
    op.drop_table('credentials')
    
