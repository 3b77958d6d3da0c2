"""Concurrent calls of one kind run as one statement, as a database batches the commits of concurrent transactions.

The first call runs at once, alone: no call waits for company. Calls that arrive while a statement is in flight go
together in the next one. Under load a statement then serves many calls for the round trip, the parse and the
commit of one; each of these cost more on our machines than the rows themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("conveyor.server")

Item = TypeVar("Item")
Result = TypeVar("Result")

MOST_PER_STATEMENT = 64


class Coalescer(Generic[Item, Result]):
    """`await coalescer(item)` runs `run_many(items)` over the items pending together, and answers each with its
    outcome: `run_many` returns one per item, in order, a result or the error of that item's own statement.

    When `run_many` raises, its one statement failed as a whole and nothing of it holds. An error that one item's
    values can cause (`split_on`: a bad value, a constraint) is found by running the items again one by one, so that
    each call gets its own answer; any other (the database out of reach, a lock timeout) answers every call at once,
    rather than making each wait for it in turn.

    `orphaned(item, result)` takes a result whose caller stopped waiting (cancelled), as a pop's entry that must go
    back to its queue. An item whose caller is gone before its statement starts is not run at all."""

    def __init__(self, run_many: Callable[[list[Item]], Awaitable[list[Result | Exception]]], *,
                 split_on: Callable[[Exception], bool] = lambda _: True,
                 orphaned: Callable[[Item, Result], Awaitable[None]] | None = None,
                 most: int = MOST_PER_STATEMENT, on_idle: Callable[[], None] | None = None):
        self._run_many = run_many
        self._split_on = split_on
        self._orphaned = orphaned
        self._most = most
        self._on_idle = on_idle
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:self._most], self._pending[self._most:]
                batch = [one for one in batch if not one[1].done()]  # callers gone: nothing to do for them
                if batch:
                    await self._run(batch)
        finally:
            self._draining = None
            if self._pending:  # only after an unexpected error above: the calls left must not wait forever
                self._draining = asyncio.ensure_future(self._drain())
            elif self._on_idle is not None:
                self._on_idle()

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        orphans: list[tuple[Item, Result]] = []
        try:
            try:
                outcomes = await self._run_many([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to the callers, each of which raises it
                if len(batch) > 1 and self._split_on(exc):
                    for one in batch:
                        if not one[1].done():
                            await self._run([one])
                    return
                outcomes = [exc] * len(batch)
            for (item, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its caller is gone
                    if not isinstance(outcome, Exception):
                        orphans.append((item, outcome))
                elif isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        except Exception as exc:  # a bug: each caller gets it, and the log says where
            log.exception("a shared statement's answers could not be handed out")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            for _, future in batch:  # cancelled (the server stops): no caller may wait forever
                if not future.done():
                    future.cancel()
            if orphans and self._orphaned is not None:
                for item, result in reversed(orphans):  # each goes back in front of the one after it
                    try:
                        await self._orphaned(item, result)
                    except Exception:  # noqa: BLE001 - the stale-delivery sweep puts it back later
                        log.warning("could not hand back what a cancelled call was given", exc_info=True)
