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
    result (`run_many` answers one result per item, in order). When a statement fails, its items are run again one
    by one, so that each call gets its own answer: its own error, or a success that another item's bad value had
    failed.

    `orphaned(item, result)` takes a result whose caller stopped waiting (cancelled), as a pop's entry that must go
    back to its queue."""

    def __init__(self, run_many: Callable[[list[Item]], Awaitable[list[Result]]], *,
                 orphaned: Callable[[Item, Result], Awaitable[None]] | None = None,
                 most: int = MOST_PER_STATEMENT, on_idle: Callable[[], None] | None = None):
        self._run_many = run_many
        self._orphaned = orphaned
        self._most = most
        self._on_idle = on_idle
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self._draining is None and not self._pending

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
                await self._run(batch)
        finally:
            self._draining = None
            if self._pending:  # only after an unexpected error above: the calls left must not wait forever
                self._draining = asyncio.ensure_future(self._drain())
            elif self._on_idle is not None:
                self._on_idle()

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run_many([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the callers, each of which raises it
            if len(batch) == 1:
                await self._answer(batch[0], error=exc)
                return
            for one in batch:  # each call's own answer: its own error, or its success
                await self._run([one])
            return
        except BaseException as exc:  # cancelled (the server stops): the callers must not wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for one, result in zip(batch, results, strict=True):
            await self._answer(one, result=result)

    async def _answer(self, one: tuple[Item, asyncio.Future[Result]], *, result: Result | None = None,
                      error: Exception | None = None) -> None:
        item, future = one
        if future.done():  # its caller is gone
            if error is None and self._orphaned is not None:
                try:
                    await self._orphaned(item, result)  # type: ignore[arg-type]
                except Exception:  # noqa: BLE001 - the stale-delivery sweep puts it back later
                    log.warning("could not hand back what a cancelled call was given", exc_info=True)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
