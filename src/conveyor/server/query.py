"""What `get_all` calls share: id/name/tag filters, ordering, paging and `only_fields` projection."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from sqlalchemy import Boolean, Column, Select, and_, not_, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from conveyor.protocol import errors
from conveyor.server.call import INT64_MAX, Call, compile_regex


def name_filter(column: Column, pattern: str) -> Any:
    """`name` is a case-insensitive regex, unanchored (agent) or anchored (SDK)."""
    compile_regex(pattern)  # a pattern that does not compile is the caller's error, not a database error
    # An inline (?i), not flags="i": SQLite's REGEXP (Python's re.search) ignores flags; PostgreSQL reads it too.
    return column.regexp_match(f"(?i){pattern}")


def tags_filter(column: Column, tags: list[str]) -> Any:
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


def has_tag(column: Column, tag: str) -> Any:
    """Whether the JSON list of strings in `column` holds `tag`."""
    return contains_text(column, orjson.dumps(tag).decode())


def hidden_filter(call: Call, column: Column) -> Any:
    if call.bool("search_hidden", False):
        return None
    return not_(has_tag(column, "hidden"))


def apply_order(call: Call, query: Select, columns: dict[str, Column], default: list[str]) -> Select:
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
    """`page`/`page_size` (ClearML's paging) or `size`/`scroll_id` (its scrolling); returns extra answer fields."""
    extra: dict[str, Any] = {}
    page = call.int("page", minimum=0)
    page_size = call.int("page_size", minimum=1)
    size = call.int("size", minimum=1)
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
        page_size = page_size or 500
        offset = (page or 0) * page_size
        if offset > INT64_MAX:
            raise errors.validation_error(f"Validation error: page {page} of size {page_size} is beyond any result")
        query = query.offset(offset).limit(page_size)
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


def _drop_path(obj: dict[str, Any], parts: list[str]) -> None:
    for key in parts[:-1]:
        obj = obj.get(key) if isinstance(obj, dict) else None
        if obj is None:
            return
    if isinstance(obj, dict):
        obj.pop(parts[-1], None)
