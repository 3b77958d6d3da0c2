"""Hot-path SQL, run on the DBAPI connection inside the caller's transaction.

SQLAlchemy's per-statement cost (building an execution context, events, result wrapping) is about ten times what
SQLite itself spends on a primary-key lookup, and these statements run on every enqueue, pop and status change.
Everything else goes through SQLAlchemy Core. Statements are written with `:name` parameters and translated to
psycopg's `%(name)s` once per dialect.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import String
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from conveyor.server.codec import dumps
from conveyor.server.store.errors import StoreError
from conveyor.server.store.schema import events, tasks

# A row held by a long transaction (a psql session) makes the hot calls fail with a 503, which clients retry, rather
# than each holding one of the pool's few connections, or a thread, while it waits.
LOCK_TIMEOUT_MS = 5000

_TASK_COLUMNS = [c.name for c in tasks.columns if c.name not in ("id", "runner", "puller")]  # see set_runner

_SET_TASK = ", ".join(f"{c} = :{c}" for c in _TASK_COLUMNS)


# Which entries a pop may take: all but one whose `avoid` names the popping worker (`:w`; None: an anonymous pop, as
# clearml-agent's) and that is younger than `:since` (a retry's entry, the worker it failed on skipping it a while).
_TAKEABLE = ("(avoid IS NULL OR CAST(:w AS VARCHAR) IS NULL OR avoid <> CAST(:w AS VARCHAR) "
             "OR added < CAST(:since AS DOUBLE PRECISION))")


def _record_columns() -> str:
    """`json_to_recordset`'s columns for an enqueue's row: the task's columns, with their types, and its own (the
    stored document it expects, the queue, when, and its number among the rows)."""
    own = {"id": "VARCHAR", "old": "TEXT", "q": "VARCHAR", "a": "DOUBLE PRECISION", "n": "INTEGER"}
    return ", ".join([f"{n} {t}" for n, t in own.items()]
                     + [f"{c} {tasks.c[c].type.compile(dialect=postgresql.dialect())}" for c in _TASK_COLUMNS])


def _entry_insert(edge: str, step: str) -> str:
    """Add an entry past the queue's back (`edge` MAX, `step` + 1) or front (MIN, - 1)."""
    return ("INSERT INTO queue_entries (queue, task, added, position, avoid) "
            "SELECT CAST(:q AS VARCHAR), CAST(:t AS VARCHAR), CAST(:a AS DOUBLE PRECISION), "
            f"COALESCE({edge}(position), 0) {step}, CAST(:v AS VARCHAR) FROM queue_entries "
            "WHERE queue = CAST(:q AS VARCHAR)")


def _entry_add(edge: str, step: str) -> dict[str, str]:
    insert = _entry_insert(edge, step)
    return {"sqlite": insert,
            "postgresql": f"WITH added AS ({insert} RETURNING queue) "
                          "SELECT pg_notify('conveyor_queues', queue) FROM added"}


# Whether a queue (its row as `queues`) takes an entry from the event loop's enqueue: no entry limit to count, and
# a document that PostgreSQL's json can read (a NUL escape it refuses leaves the call to the locked path).
_QUEUE_TAKES = ("CASE WHEN strpos(queues.doc, '\\u0000') > 0 THEN false "
                "ELSE COALESCE(CAST(queues.doc AS json) ->> 'max_entries', '0') = '0' END")


QUERIES: dict[str, str | dict[str, str]] = {
    "get_task": "SELECT doc FROM tasks WHERE id = :id",
    "get_task_locked": {
        "postgresql": "SELECT doc FROM tasks WHERE id = :id FOR UPDATE",
        "sqlite": "SELECT doc FROM tasks WHERE id = :id",  # BEGIN IMMEDIATE already locks the database
    },
    "save_task": f"UPDATE tasks SET {_SET_TASK} WHERE id = :id",
    "insert_task": f"INSERT INTO tasks (id, {', '.join(_TASK_COLUMNS)}) "
                   f"VALUES (:id, {', '.join(':' + c for c in _TASK_COLUMNS)})",
    # An enqueue, a reset or a retry saves the task and forgets its last runner in one statement.
    "save_task_unrun": f"UPDATE tasks SET {_SET_TASK}, runner = NULL, puller = NULL WHERE id = :id",
    "set_runner": "UPDATE tasks SET runner = :runner, puller = :w WHERE id = :id",
    "get_runner": "SELECT runner FROM tasks WHERE id = :id",
    "get_puller": "SELECT puller FROM tasks WHERE id = :id",
    "queue_exists": "SELECT id FROM queues WHERE id = :id",
    "get_queue": "SELECT doc FROM queues WHERE id = :id",
    # Append or prepend in one statement, so that two concurrent adds cannot read the same edge position.
    # The casts keep PostgreSQL from deducing two types for the one parameter used twice.
    # On PostgreSQL the same statement NOTIFYs the other server processes (sent at commit): one round trip.
    "add_entry_back": _entry_add("MAX", "+ 1"),
    "add_entry_front": _entry_add("MIN", "- 1"),
    # A popped entry is remembered until its task leaves `queued` (see schema.deliveries); a task popped again
    # after a give-back replaces its earlier delivery.
    "record_delivery": "INSERT INTO deliveries (task, queue, added, delivered, avoid) VALUES (:t, :q, :a, :d, :v) "
                       "ON CONFLICT (task) DO UPDATE SET queue = excluded.queue, added = excluded.added, "
                       "delivered = excluded.delivered, avoid = excluded.avoid",
    "forget_delivery": "DELETE FROM deliveries WHERE task = :t",
    "notify": {"postgresql": "SELECT pg_notify('conveyor_queues', :q)", "sqlite": ""},
    # PostgreSQL: the pop, its delivery record and the runner in one statement (one round trip per pop); data-
    # modifying CTEs run whether or not the final SELECT reads them.
    "pop_and_deliver": (
        "WITH popped AS (DELETE FROM queue_entries WHERE seq = (SELECT seq FROM queue_entries WHERE queue = :q "
        f"AND {_TAKEABLE} ORDER BY position, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING task, added, queue, avoid), "
        "delivered AS (INSERT INTO deliveries (task, queue, added, delivered, avoid) "
        "SELECT task, queue, added, CAST(:d AS DOUBLE PRECISION), avoid FROM popped ON CONFLICT (task) DO UPDATE "
        "SET queue = excluded.queue, added = excluded.added, delivered = excluded.delivered, "
        "avoid = excluded.avoid), "
        "ran AS (UPDATE tasks SET runner = CAST(:runner AS VARCHAR), puller = CAST(:w AS VARCHAR) "
        "WHERE tasks.id = ANY(ARRAY(SELECT task FROM popped)) AND CAST(:runner AS VARCHAR) IS NOT NULL) "
        "SELECT task, added, avoid FROM popped"),
    # PostgreSQL's enqueue on the event loop (services/tasks.py): the task saved (runner forgotten) and its entry
    # added in one statement that commits by itself. The save holds only if the document is still the one the
    # enqueue knew (known_docs.py) or read, and the queue exists with no entry limit: otherwise it saves nothing,
    # and the enqueue reads again, or leaves the call to the locked path. A task row locked by a transaction in
    # progress is skipped, not waited for: the locked path waits for it, in a thread, rather than every enqueue that
    # shares the statement.
    # A task document too large to handle on the event loop reads as none: the locked path takes it, in a thread.
    "enqueue_read": ("SELECT (SELECT doc FROM queues WHERE id = :q), "
                     "(SELECT CASE WHEN length(doc) <= :most THEN doc END FROM tasks WHERE id = :t)"),
    "enqueue_write": (
        "WITH held AS (SELECT id FROM tasks WHERE id = CAST(:id AS VARCHAR) FOR UPDATE SKIP LOCKED), "
        f"saved AS (UPDATE tasks SET {_SET_TASK}, runner = NULL, puller = NULL WHERE id = (SELECT id FROM held) "
        "AND doc = :old AND EXISTS "
        f"(SELECT 1 FROM queues WHERE id = CAST(:q AS VARCHAR) AND {_QUEUE_TAKES}) RETURNING id), "
        "added AS (INSERT INTO queue_entries (queue, task, added, position) "
        "SELECT CAST(:q AS VARCHAR), id, CAST(:a AS DOUBLE PRECISION), COALESCE((SELECT MAX(position) "
        "FROM queue_entries WHERE queue = CAST(:q AS VARCHAR)), 0) + 1 FROM saved RETURNING queue) "
        "SELECT pg_notify('conveyor_queues', queue) FROM added"),
    # The same for several enqueues at once (store/coalescing.py): `:rows`, a JSON list with one object per enqueue
    # (a JSON text costs a fraction of arrays of documents to send and to read); the entries of one queue added in
    # the order of the rows (`n`). It returns the tasks it enqueued.
    # Rows of `tasks` (and of `queue_entries` in `pop_many`) are named by `= ANY(ARRAY(...))`, here and in the pops:
    # the planner looks them up by key from a small table on, where a join or an IN list let it read the whole table
    # while it was small, and psycopg prepares the statement, so that plan stayed in use as the table grew (each
    # shared enqueue came to read thousands of tasks) until the next ANALYZE.
    "enqueue_many": (
        f"WITH v AS (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS v({_record_columns()})), "
        f"ok AS (SELECT id FROM queues WHERE id = ANY(ARRAY(SELECT q FROM v)) AND {_QUEUE_TAKES}), "
        "held AS (SELECT id FROM tasks WHERE id = ANY(ARRAY(SELECT id FROM v)) FOR UPDATE SKIP LOCKED), "
        f"saved AS (UPDATE tasks SET {', '.join(f'{c} = v.{c}' for c in _TASK_COLUMNS)}, runner = NULL, "
        "puller = NULL FROM v WHERE tasks.id = ANY(ARRAY(SELECT id FROM held)) AND tasks.id = v.id "
        "AND tasks.doc = v.old AND v.q IN (SELECT id FROM ok) "
        "RETURNING tasks.id, v.q, v.a, v.n), "
        "added AS (INSERT INTO queue_entries (queue, task, added, position) SELECT q, id, a, "
        "COALESCE((SELECT MAX(position) FROM queue_entries e WHERE e.queue = saved.q), 0) "
        "+ row_number() OVER (PARTITION BY q ORDER BY n) FROM saved RETURNING queue, task) "
        "SELECT task, pg_notify('conveyor_queues', queue) FROM added"),
    # Several pops of one queue at once (store/coalescing.py): the `:k` head entries go to the pops in order (the
    # arrays `:runner` and `:w`, one element a pop). While an entry of the queue is held back from some worker (a
    # retry's `avoid`), it pops nothing and answers a row numbered 0: each pop then runs `pop_and_deliver`, which
    # knows who may take what.
    "pop_many": (
        "WITH req AS (SELECT * FROM unnest(CAST(:runner AS VARCHAR[]), CAST(:w AS VARCHAR[])) WITH ORDINALITY "
        "AS r(runner, w, n)), "
        "held AS (SELECT 1 FROM queue_entries WHERE queue = CAST(:q AS VARCHAR) AND avoid IS NOT NULL "
        "AND added >= CAST(:since AS DOUBLE PRECISION) LIMIT 1), "
        "head AS (SELECT seq FROM queue_entries WHERE queue = CAST(:q AS VARCHAR) AND NOT EXISTS "
        "(SELECT 1 FROM held) ORDER BY position, seq LIMIT :k FOR UPDATE SKIP LOCKED), "
        "popped AS (DELETE FROM queue_entries e WHERE e.seq = ANY(ARRAY(SELECT seq FROM head)) "
        "RETURNING e.task, e.added, e.queue, e.position, e.seq, e.avoid), "
        "given AS (SELECT p.task, p.added, p.queue, p.avoid, req.runner, req.w, req.n FROM "
        "(SELECT *, row_number() OVER (ORDER BY position, seq) AS n FROM popped) p JOIN req ON req.n = p.n), "
        "delivered AS (INSERT INTO deliveries (task, queue, added, delivered, avoid) "
        "SELECT task, queue, added, CAST(:d AS DOUBLE PRECISION), avoid FROM given ON CONFLICT (task) DO UPDATE "
        "SET queue = excluded.queue, added = excluded.added, delivered = excluded.delivered, "
        "avoid = excluded.avoid), "
        "ran AS (UPDATE tasks SET runner = given.runner, puller = given.w FROM given "
        "WHERE tasks.id = ANY(ARRAY(SELECT task FROM given)) AND tasks.id = given.task AND given.runner IS NOT NULL) "
        "SELECT n, task, added, avoid FROM given UNION ALL SELECT 0, NULL, NULL, NULL FROM held"),
    # The NOTIFYs of enqueues that went without them (`enqueue_write_quiet`) when another server process has begun
    # to listen meanwhile.
    "notify_queues": "SELECT pg_notify('conveyor_queues', q) FROM unnest(CAST(:qs AS VARCHAR[])) AS q",
    # A popped entry whose answer reached nobody goes back to the front of its queue (documents.return_delivery).
    "give_back": {"postgresql": (
        "WITH forgotten AS (DELETE FROM deliveries WHERE task = CAST(:t AS VARCHAR)), "
        f"added AS ({_entry_insert('MIN', '- 1')} RETURNING queue) "
        "SELECT pg_notify('conveyor_queues', queue) FROM added")},
    # What `get_task_info` answers about a popped task, without its whole document unless json cannot read it.
    "task_owner": ("SELECT CASE WHEN strpos(doc, '\\u0000') = 0 THEN CAST(doc AS json) ->> 'company' END, user_id, "
                   "CASE WHEN strpos(doc, '\\u0000') > 0 THEN doc END FROM tasks WHERE id = :id"),
    # What a named worker's pop must respect (model.forcing): each queue's tags, and the worker's `force` property.
    "pull_policy": ("SELECT q.id, q.tags, f.value, f.expires FROM queues q LEFT JOIN runtime_properties f "
                    "ON f.worker = :w AND f.key = 'force' WHERE q.id = ANY(:ids)"),
    # The same for several pops at once (store/coalescing.py): `:reqs`, a JSON list of {n, w, ids}; rows numbered n.
    "pull_policies": ("SELECT r.n, q.id, q.tags, f.value, f.expires FROM json_to_recordset(CAST(:reqs AS json)) "
                      "AS r(n INTEGER, w VARCHAR, ids json) "
                      "CROSS JOIN LATERAL json_array_elements_text(r.ids) AS i(id) JOIN queues q ON q.id = i.id "
                      "LEFT JOIN runtime_properties f ON f.worker = r.w AND f.key = 'force'"),
    # When the first entry of these queues held back from worker `:w` was added (a retry's, held back since `:since`):
    # its long-poll wakes when that entry may go to it.
    "held_back": ("SELECT MIN(added) FROM queue_entries WHERE queue = ANY(CAST(:ids AS VARCHAR[])) "
                  "AND avoid = CAST(:w AS VARCHAR) AND added >= CAST(:since AS DOUBLE PRECISION)"),
    # SQLite's pop: delete and return the head entry of one queue (PostgreSQL's is `pop_and_deliver`). Under BEGIN
    # IMMEDIATE the whole database is write-locked, so the sub-select cannot race: two workers never get one entry.
    "pop": {
        "sqlite": "DELETE FROM queue_entries WHERE seq = (SELECT seq FROM queue_entries WHERE queue = :q "
                  f"AND {_TAKEABLE} ORDER BY position, seq LIMIT 1) RETURNING task, added, avoid",
    },
}

# The enqueues on the event loop without their NOTIFY, for a server process that no other one listens to (its own
# long-polls it wakes itself): PostgreSQL's delivery of a notification to the server's own LISTEN connection, and the
# server's read of it, cost a tenth of an enqueue+pop pair (store/notify.py `Peers`).
for _name in ("enqueue_write", "enqueue_many"):
    _text = QUERIES[_name]
    assert isinstance(_text, str) and "pg_notify('conveyor_queues', queue)" in _text
    QUERIES[f"{_name}_quiet"] = _text.replace("pg_notify('conveyor_queues', queue)", "queue")

_PARAM = re.compile(r"(?<![:\w]):([a-z_]+)")


@cache
def statement(name: str, dialect: str) -> str:
    sql = QUERIES[name]
    if isinstance(sql, dict):
        sql = sql[dialect]
    return _PARAM.sub(r"%(\1)s", sql) if dialect == "postgresql" else sql


def run(conn: Connection, name: str, params: dict[str, Any]) -> Any:
    """Execute a named statement in `conn`'s transaction; returns the DBAPI cursor (rows are plain tuples)."""
    sql = statement(name, conn.dialect.name)
    return _execute(conn, sql, params) if sql else None


_EVENT_COLUMNS = [c.name for c in events.columns if c.name != "seq"]
EVENTS_PER_INSERT = 500  # SQLite's multi-row VALUES: 6,000 parameters, within its limit


@lru_cache(maxsize=32)
def _insert_events(count: int) -> str:
    """SQLite's insert of `count` events (PostgreSQL's reads one JSON parameter: `insert_events_json`)."""
    row = f"({', '.join(['?'] * len(_EVENT_COLUMNS))})"
    return (f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES {', '.join([row] * count)} "
            "ON CONFLICT (task, client_id) DO NOTHING")


def _json_events_insert(where: str = "") -> str:
    """PostgreSQL's insert of a batch of events given as one JSON parameter `:rows`, stored in the order of the list
    (`n`). `value` travels as text, so that NaN and infinities (which JSON lacks) arrive as sent."""
    # strings as TEXT: the insert itself checks their lengths, with the error it gives any insert
    types = {c: ("TEXT" if c == "value" or isinstance(events.c[c].type, String)
                 else events.c[c].type.compile(dialect=postgresql.dialect())) for c in _EVENT_COLUMNS}
    listed = ", ".join(_EVENT_COLUMNS)
    read = ", ".join("CAST(r.value AS DOUBLE PRECISION)" if c == "value" else f"r.{c}" for c in _EVENT_COLUMNS)
    return (f"INSERT INTO events ({listed}) SELECT {read} FROM json_to_recordset(CAST(:rows AS json)) "
            f"AS r(n INTEGER, {', '.join(f'{c} {t}' for c, t in types.items())}) {where} ORDER BY r.n "
            "ON CONFLICT (task, client_id) DO NOTHING")


QUERIES["insert_events_json"] = _json_events_insert()
# A task's log batch on the event loop (services/events.py): the task saved (its `last_update`) only if its document
# is still the one this process knew or read, and the caller owns it (`:owner`) or pulled it (`:key`, tasks.runner);
# its events stored only if it was. A task row locked by a transaction in progress is skipped, not waited for (the
# batch then goes to a thread, which waits). Answers (tasks saved, events added, task rows locked here).
QUERIES["log_batch_write"] = (
    "WITH held AS (SELECT id FROM tasks WHERE id = CAST(:id AS VARCHAR) FOR UPDATE SKIP LOCKED), "
    f"saved AS (UPDATE tasks SET {_SET_TASK} WHERE id = (SELECT id FROM held) AND doc = :old "
    "AND (CAST(:owner AS BOOLEAN) OR runner = CAST(:key AS VARCHAR)) RETURNING id), "
    f"added AS ({_json_events_insert('WHERE EXISTS (SELECT 1 FROM saved)')} RETURNING 1) "
    "SELECT (SELECT count(*) FROM saved), (SELECT count(*) FROM added), (SELECT count(*) FROM held)")
QUERIES["task_for_events"] = "SELECT CASE WHEN length(doc) <= :most THEN doc END, runner FROM tasks WHERE id = :id"


def events_json(rows: list[dict[str, Any]]) -> str:
    """The `:rows` parameter of PostgreSQL's event inserts: the rows in order, each `value` as text."""
    return dumps([{**row, "n": n, "value": None if row["value"] is None else repr(row["value"])}
                  for n, row in enumerate(rows)])


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Store events (`model.events.event_row` dicts) with one statement per 500: one round trip and one statement for
    the database to run, where an executemany costs one of each per event (a log batch is hundreds). On PostgreSQL the
    rows go as one JSON parameter: psycopg rewrites the placeholders of a statement too long for its cache in Python
    on every call, which for a multi-row VALUES held the interpreter lock for most of a log batch's time.
    An event whose client id its task already has is skipped: a batch retried after a lost answer adds it once."""
    for start in range(0, len(rows), EVENTS_PER_INSERT):
        chunk = rows[start:start + EVENTS_PER_INSERT]
        if conn.dialect.name == "postgresql":
            run(conn, "insert_events_json", {"rows": events_json(chunk)})
        else:
            _execute(conn, _insert_events(len(chunk)), tuple(row[c] for row in chunk for c in _EVENT_COLUMNS))


def _execute(conn: Connection, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> Any:
    raw = conn.connection.dbapi_connection
    if raw is None:  # only after the connection was invalidated, which ends its transaction first
        raise StoreError("the database connection was closed")
    cursor = raw.cursor()
    dbapi = conn.dialect.loaded_dbapi
    try:
        cursor.execute(sql, params)
    except dbapi.Error as exc:  # wrapped as SQLAlchemy does, so that callers see DataError, OperationalError, ...
        if conn.dialect.is_disconnect(exc, raw, cursor):
            # The database went away (a restart): the pool's other connections are as dead as this one. A fresh pool
            # serves the next calls (this call fails with a 503, which clients retry), as SQLAlchemy does for Core.
            conn.engine.dispose(close=False)
        raise DBAPIError.instance(sql, params, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect) from exc
    return cursor
