"""What `get_all` calls share: id/name/tag filters, ordering, paging and `only_fields` projection."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import regex
from sqlalchemy import Boolean, ColumnElement, Select, Table, and_, not_, or_, text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from conveyor.protocol import errors
from conveyor.server.call import Call
from conveyor.server.codec import INT64_MAX, Document, loads
from conveyor.server.store import name_index, patterns
from conveyor.server.store.schema import tasks

QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement ended by statement_timeout


@dataclass(frozen=True)
class Listing:
    """What the `get_all` of one table filters and orders on: its `id`, `name` and `system_tags` columns always,
    the tag columns named here, and the order fields (API name → column name)."""

    table: Table
    order: dict[str, str]
    default_order: tuple[str, ...]
    tag_columns: tuple[str, ...] = ()

    def order_columns(self) -> dict[str, ColumnElement[Any]]:
        return {field: self.table.c[name] for field, name in self.order.items()}


def listing(call: Call, query: Select[Any], spec: Listing) -> tuple[Select[Any], dict[str, Any]]:
    """A `get_all` query with what every listing shares: `id`, `name` (a regex) and tag filters, hidden documents
    left out unless asked for by id or with `search_hidden`, ordering and paging. Returns it with the answer's extra
    fields (a scroll id). Run it with `fetch`."""
    c = spec.table.c
    ids = call.str_list("id")
    if ids is not None:
        query = query.where(c.id.in_(ids))
    name = call.str("name")
    if name:
        query = query.where(name_filter(call, c.name, name))
    for field in spec.tag_columns:
        values = call.str_list(field)
        clause = tags_filter(c[field], values) if values else None
        if clause is not None:
            query = query.where(clause)
    if ids is None:
        hidden = hidden_filter(call, c.system_tags)
        if hidden is not None:
            query = query.where(hidden)
    query = apply_order(call, query, spec.order_columns(), list(spec.default_order))
    return apply_paging(call, query)


def documents(call: Call, query: Select[Any]) -> list[Document]:
    """Run a `listing` query whose one column is the JSON document, keeping the `only_fields` asked for."""
    only = call.str_list("only_fields")
    with call.store.read_apart() as conn:
        rows = fetch(call, conn, query)
    return [project(loads(r[0]), only) for r in rows]


def name_filter(call: Call, column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
    """`name` is a case-insensitive regex, unanchored (agent) or anchored (SDK). Run the query with `fetch`, which
    bounds the pattern's evaluation."""
    try:
        patterns.compile_pattern(pattern)  # a pattern that does not compile is the caller's error
    except regex.error as exc:
        raise errors.validation_error(f"Invalid regular expression in 'name': {pattern!r} ({exc})") from None
    call.name_pattern = pattern
    # An inline (?i), not flags="i": SQLite's REGEXP ignores flags; PostgreSQL reads it too.
    matches = column.regexp_match(f"(?i){pattern}")
    like = patterns.like_prefilter(pattern)
    if like is None:
        return matches
    # What every match holds, first: the database's LIKE (case-insensitive for ASCII on SQLite) drops the other
    # names before the regex runs.
    holds: ColumnElement[bool] = (column.ilike(like, escape="\\") if call.store.dialect == "postgresql"
                                  else column.like(like, escape="\\"))
    if column is tasks.c.name and call.store.task_name_index:  # SQLite's (PostgreSQL's serves the LIKE by itself)
        call.name_index_pattern = name_index.index_pattern(patterns.like_prefilter(pattern, folds=False) or "")
    return and_(holds, matches)


def fetch(call: Call, conn: Connection, query: Select[Any]) -> Sequence[Row[Any]]:
    """The rows of a `get_all` query. With a name pattern, its evaluation is bounded by
    `conveyor.server.name_filter_timeout_sec`, and a pattern that runs past it is a 400."""
    pattern = call.name_pattern
    if pattern is None:
        return conn.execute(query).all()
    indexed = call.name_index_pattern
    if indexed is not None and name_index.few_tasks_named_like(conn, indexed):
        # Few names hold it: read those tasks alone. Where many do, the list's order finds a page of them sooner.
        query = query.where(tasks.c.id.in_(name_index.tasks_named_like(indexed)))
    limit = call.state.settings.name_filter_timeout_sec
    try:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL statement_timeout = {max(1, int(limit * 1000))}"))
            return conn.execute(query).all()
        with patterns.deadline(limit):
            try:
                return conn.execute(query).all()
            except OperationalError:
                if patterns.exceeded():
                    raise _too_expensive(pattern, limit) from None
                raise
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:
            raise _too_expensive(pattern, limit) from None
        raise


def _too_expensive(pattern: str, limit: float) -> errors.ApiError:
    return errors.bad_request(
        f"The name pattern {pattern!r} is too expensive: matching it took longer than {limit:g} s (nested "
        "repetitions such as (a|a)+ backtrack exponentially). Use a simpler pattern, or raise "
        "conveyor.server.name_filter_timeout_sec on the server.")


def tags_filter(column: ColumnElement[Any], tags: list[str]) -> ColumnElement[bool] | None:
    """ClearML tag filters: plain tags match any of them; `-tag` or `__$not tag` excludes; `__$all` requires all."""
    include: list[str] = []
    exclude: list[str] = []
    mode_all = False
    negate_next = False
    for tag in tags:
        if tag in ("__$all", "__$and"):
            mode_all = True
        elif tag in ("__$any", "__$or"):
            mode_all = False
        elif tag == "__$not":
            negate_next = True
        elif tag.startswith("-") and len(tag) > 1:
            exclude.append(tag[1:])
        elif negate_next:
            exclude.append(tag)
            negate_next = False
        else:
            include.append(tag)
    clauses = []
    # Tags are a JSON list of strings in a text column: match the quoted element.
    found = [has_tag(column, t) for t in include]
    if found:
        clauses.append(and_(*found) if mode_all else or_(*found))
    clauses.extend(not_(has_tag(column, t)) for t in exclude)
    return and_(*clauses) if clauses else None


class contains_text(FunctionElement):
    """`contains_text(haystack, needle)`: a case-sensitive substring test with no wildcards. (LIKE would do
    neither on SQLite: it ignores case and has no default escape for `_` and `%`.)"""

    type = Boolean()
    inherit_cache = True
    name = "contains_text"


@compiles(contains_text)
def _contains_text(element: contains_text, compiler: Any, **kw: Any) -> str:
    return f"(strpos({compiler.process(element.clauses, **kw)}) > 0)"


@compiles(contains_text, "sqlite")
def _contains_text_sqlite(element: contains_text, compiler: Any, **kw: Any) -> str:
    return f"(instr({compiler.process(element.clauses, **kw)}) > 0)"


def has_tag(column: ColumnElement[Any], tag: str) -> ColumnElement[bool]:
    """Whether the JSON list of strings in `column` holds `tag`."""
    return contains_text(column, orjson.dumps(tag).decode())


def hidden_filter(call: Call, column: ColumnElement[Any]) -> ColumnElement[bool] | None:
    if call.bool("search_hidden", False):
        return None
    return not_(has_tag(column, "hidden"))


def apply_order(call: Call, query: Select[Any], columns: Mapping[str, ColumnElement[Any]],
                default: list[str]) -> Select[Any]:
    order_by = call.str_list("order_by") or default
    for field in order_by:
        if not field:
            continue
        desc = field.startswith("-")
        name = field.lstrip("-+")
        column = columns.get(name)
        if column is None:
            raise errors.validation_error(
                f"Cannot order by '{name}': supported fields are {', '.join(sorted(columns))}"
            )
        query = query.order_by(column.desc() if desc else column.asc())
    return query


def apply_paging(call: Call, query: Select) -> tuple[Select, dict[str, Any]]:
    """`page`/`page_size` (ClearML's paging) or `size`/`scroll_id` (its scrolling); returns extra answer fields.

    A page holds at most `conveyor.server.max_page_size` items (a larger one is a 400, not a silently short page
    that would end a client's paging loop early). A call with no paging gets the first
    `conveyor.server.default_page_size` items, unless it names its `id`s: those lists are the caller's to size."""
    settings = call.state.settings
    extra: dict[str, Any] = {}
    page = call.int("page", minimum=0)
    page_size = call.int("page_size", minimum=1)
    size = call.int("size", minimum=1)
    for field, value in (("page_size", page_size), ("size", size)):
        if value is not None and value > settings.max_page_size:
            raise errors.validation_error(
                f"Validation error: {field} {value} is above the server's maximum page size of "
                f"{settings.max_page_size}: ask for smaller pages (page, page_size), or raise "
                "conveyor.server.max_page_size on the server")
    if size is not None:
        offset = 0
        scroll = call.str("scroll_id")
        if scroll:
            try:
                offset = int(scroll)
            except ValueError:
                raise errors.validation_error(f"Invalid scroll_id: {scroll!r}") from None
        if offset < 0 or offset > INT64_MAX:
            raise errors.validation_error(f"Invalid scroll_id: {scroll!r}")
        query = query.offset(offset).limit(size)
        extra["scroll_id"] = str(offset + size)
    elif page is not None or page_size is not None:
        page_size = page_size or settings.default_page_size
        offset = (page or 0) * page_size
        if offset > INT64_MAX:
            raise errors.validation_error(f"Validation error: page {page} of size {page_size} is beyond any result")
        query = query.offset(offset).limit(page_size)
    elif call.body.get("id") is None:
        query = query.limit(settings.default_page_size)
    return query, extra


def project(doc: dict[str, Any], only_fields: list[str] | None) -> dict[str, Any]:
    """Keep the dotted paths asked for (`id` always); `-path` removes a path."""
    if not only_fields:
        return doc
    include = [f for f in only_fields if f and not f.startswith("-")]
    exclude = [f[1:] for f in only_fields if f.startswith("-")]
    if include:
        out: dict[str, Any] = {"id": doc.get("id")}
        for path in include:
            _copy_path(doc, out, path.split("."))
    else:
        out = copy.deepcopy(doc)
    for path in exclude:
        _drop_path(out, path.split("."))
    return out


def _copy_path(src: dict[str, Any], dst: dict[str, Any], parts: list[str]) -> None:
    key = parts[0]
    if not isinstance(src, dict) or key not in src:
        return
    if len(parts) == 1:
        dst[key] = src[key]
        return
    if not isinstance(src[key], dict):
        return
    child = dst.setdefault(key, {})
    if isinstance(child, dict):
        _copy_path(src[key], child, parts[1:])


def _drop_path(obj: Any, parts: list[str]) -> None:
    for key in parts[:-1]:
        obj = obj.get(key) if isinstance(obj, dict) else None
        if obj is None:
            return
    if isinstance(obj, dict):
        obj.pop(parts[-1], None)
