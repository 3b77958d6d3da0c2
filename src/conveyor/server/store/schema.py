"""One schema for SQLite and PostgreSQL. Documents are JSON text; what queries filter or sort on is a column."""

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text, text

metadata = MetaData()

ID = String(64)  # 32-hex ids; worker ids and access keys are longer free text
NAME = String(512)

meta = Table(
    "meta",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", NAME, nullable=False),
    Column("created", Float, nullable=False),
    Column("role", String(16), nullable=False, server_default="user"),  # "admin" or "user"
    Index("ux_users_name", "name", unique=True),
)

credentials = Table(
    "credentials",
    metadata,
    Column("access_key", String(128), primary_key=True),
    Column("secret_hash", String(128), nullable=False),  # sha256 of a random 256-bit secret; the secret is never stored
    Column("user_id", ID, nullable=False),
    Column("label", NAME, nullable=False, default=""),
    Column("created", Float, nullable=False),
    Column("last_used", Float),
    Column("revoked", Float),  # when it was revoked; NULL while valid
)

projects = Table(
    "projects",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", NAME, nullable=False, index=True),
    Column("created", Float, nullable=False),
    Column("last_update", Float, nullable=False),
    Column("system_tags", Text, nullable=False, default="[]"),
    Column("doc", Text, nullable=False),
)

# Whether a task is archived, as a literal: the partial index ix_tasks_archived serves the queries that say so in
# these very words (a bound parameter would not match it).
ARCHIVED = text("system_tags LIKE '%\"archived\"%'")

tasks = Table(
    "tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", NAME, nullable=False),
    Column("status", String(32), nullable=False),
    Column("type", String(64), nullable=False),
    Column("project", ID),
    Column("parent", ID),
    Column("user_id", ID),
    Column("queue", ID),
    Column("last_worker", NAME),
    Column("tags", Text, nullable=False, default="[]"),
    Column("system_tags", Text, nullable=False, default="[]"),
    Column("created", Float, nullable=False),
    Column("last_update", Float, nullable=False),
    Column("started", Float),
    Column("completed", Float),
    Column("status_changed", Float),
    Column("last_iteration", BigInteger, nullable=False, default=0),
    Column("doc", Text, nullable=False),
    # The access key that last pulled the task off a queue: its worker may report on the task (not in the doc,
    # which every reader sees; set by the pop, cleared by enqueue and reset).
    Column("runner", String(128)),
    # The worker that pulled the task's current run, when it named itself (Conveyor's daemon does): the worker a
    # retry skips for a while (queue_entries.avoid). Set and cleared with `runner`.
    Column("puller", NAME),
    # The task list's filters in its default order (newest first); the projects page counts tasks by project and
    # status from the last two alone (all, then the archived ones), never reading the documents.
    Index("ix_tasks_status_created", "status", "created"),
    Index("ix_tasks_project_created", "project", "created"),
    Index("ix_tasks_project_status", "project", "status"),
    Index("ix_tasks_archived", "project", "status", sqlite_where=ARCHIVED, postgresql_where=ARCHIVED),
    Index("ix_tasks_last_update", "last_update"),
    Index("ix_tasks_created", "created"),
    Index("ix_tasks_name", "name"),
)

queues = Table(
    "queues",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", NAME, nullable=False, index=True),
    Column("created", Float, nullable=False),
    Column("last_update", Float, nullable=False),
    Column("tags", Text, nullable=False, default="[]"),
    Column("system_tags", Text, nullable=False, default="[]"),
    Column("doc", Text, nullable=False),
)

# A queue's entries; order is (position, seq). Popping deletes the row, so an entry is delivered once.
queue_entries = Table(
    "queue_entries",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("queue", ID, nullable=False),
    Column("task", ID, nullable=False),
    Column("added", Float, nullable=False),
    Column("position", Float, nullable=False),
    # a worker that skips this entry until `added` + retry_elsewhere_sec (a retry's, after a failure on it)
    Column("avoid", NAME),
    Index("ix_queue_entries_order", "queue", "position", "seq"),
    Index("ix_queue_entries_task", "task"),
)

# Entries popped by queues.get_next_task whose task has not left `queued` yet. The answer may never have reached
# its client (it gave up as the answer was written, or died): a delivery not acknowledged by a status change within
# conveyor.server.unstarted_requeue_sec puts the task back at the front of its queue.
deliveries = Table(
    "deliveries",
    metadata,
    Column("task", ID, primary_key=True),
    Column("queue", ID, nullable=False),
    Column("added", Float, nullable=False),
    Column("delivered", Float, nullable=False, index=True),
    Column("avoid", NAME),  # the entry's (a retry's hold), kept for when the task goes back to its queue
)

workers = Table(
    "workers",
    metadata,
    Column("id", NAME, primary_key=True),
    Column("user_id", ID),
    Column("ip", String(64)),
    Column("register_time", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("timeout", Integer, nullable=False),
    Column("task", ID),
    Column("queue", ID),
    Column("doc", Text, nullable=False),  # queues, tags, last machine stats, last report time
)

worker_stats = Table(
    "worker_stats",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("worker", NAME, nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("task", ID),
    Column("stats", Text, nullable=False),
    Index("ix_worker_stats_worker", "worker", "seq"),
    Index("ix_worker_stats_time", "timestamp"),
)

# Machine stats older than the raw window, folded per worker into buckets of `resolution` seconds (60 for the
# last day, 600 for the week beyond): a week of reports from many workers stays small and a long range reads few rows.
# `stats` is JSON {metric: {variant: [min, max, sum, count]}}; `active` is 1 when a report of the bucket ran a task.
worker_stats_rollup = Table(
    "worker_stats_rollup",
    metadata,
    Column("worker", NAME, primary_key=True),
    Column("resolution", Integer, primary_key=True),
    Column("bucket", Float, primary_key=True),  # start of the bucket, epoch seconds
    Column("active", Integer, nullable=False, default=0),
    Column("stats", Text, nullable=False),
    Index("ix_worker_stats_rollup_time", "resolution", "bucket"),
)

# Samples of each queue's length and its entries' average wait. Raw samples (resolution 0) land in one slot per
# sampling period, so several server processes on one database add one row a slot; older ones are folded into
# 10-minute slots keeping the sample with the longest wait, as ClearML's queue metrics do.
queue_metrics = Table(
    "queue_metrics",
    metadata,
    Column("queue", ID, primary_key=True),
    Column("resolution", Integer, primary_key=True),
    Column("slot", BigInteger, primary_key=True),  # start of the slot, epoch seconds
    Column("length", Integer, nullable=False),
    Column("avg_waiting", Float, nullable=False),  # seconds
    Index("ix_queue_metrics_time", "resolution", "slot"),
)

runtime_properties = Table(
    "runtime_properties",
    metadata,
    Column("worker", NAME, primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", Text, nullable=False),
    Column("expires", Float),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("task", ID, nullable=False),
    Column("type", String(64), nullable=False),
    Column("timestamp", BigInteger, nullable=False),  # epoch ms, as clients send it
    Column("iter", BigInteger),
    Column("metric", String(512)),
    Column("variant", String(512)),
    Column("value", Float),
    Column("level", String(16)),
    Column("worker", NAME),
    Column("msg", Text),
    Column("doc", Text),  # the rest of a non-log event (plots, vectors); NULL for logs and scalars
    Column("client_id", String(128)),  # set by our agent so that a retried batch adds each event once
    Index("ix_events_task_type", "task", "type", "seq"),
    Index("ux_events_task_client_id", "task", "client_id", unique=True),
)
