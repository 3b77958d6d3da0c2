"""Concurrent calls sharing one statement (store/coalescing.py): who goes with whom, and what each caller gets back
when the statement fails or the caller is gone."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.server.store.coalescing import Coalescer


class Statements:
    """A stand-in for the database: records each statement's items; an item "bad" fails any statement holding it."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.gated = gated
        self.tickets = asyncio.Semaphore(0)  # gated: a statement waits for a ticket, as for the database's answer

    def release(self) -> None:
        self.tickets.release()

    async def run_many(self, items: list[str]) -> list[str | Exception]:
        self.batches.append(items)
        if self.gated:
            await self.tickets.acquire()
        if "down" in items:
            raise ConnectionError("the database is out of reach")
        if "bad" in items:
            raise ValueError(f"refused: {len(items)} items")
        # "own": a statement of its own that failed after the others committed (a pop one by one)
        return [KeyError(item) if item.startswith("own") else item.upper() for item in items]


def test_the_first_call_goes_alone_and_those_arriving_meanwhile_go_together() -> None:
    async def run() -> tuple[list[str], list[list[str]]]:
        db = Statements(gated=True)
        together = Coalescer(db.run_many)
        first = asyncio.ensure_future(together("a"))
        await asyncio.sleep(0.01)  # its statement is in flight
        later = [asyncio.ensure_future(together(x)) for x in ("b", "c", "d")]
        await asyncio.sleep(0.01)
        db.release()
        db.release()
        answers = await asyncio.gather(first, *later)
        return answers, db.batches

    answers, batches = asyncio.run(run())
    assert answers == ["A", "B", "C", "D"]
    assert batches == [["a"], ["b", "c", "d"]]


def test_a_statement_holds_at_most_its_limit() -> None:
    async def run() -> list[list[str]]:
        db = Statements()
        together = Coalescer(db.run_many, most=2)
        await asyncio.gather(*(together(x) for x in "abcde"))
        return db.batches

    assert asyncio.run(run()) == [["a", "b"], ["c", "d"], ["e"]]


def _all_at_once(items: tuple[str, ...]) -> tuple[list[object], list[list[str]]]:
    """The calls made at once, each item's answer (or error), and the statements run; a bad value (ValueError)
    splits a statement."""
    async def run() -> tuple[list[object], list[list[str]]]:
        db = Statements()
        together = Coalescer(db.run_many, split_on=lambda exc: isinstance(exc, ValueError))
        answers = await asyncio.gather(*(together(x) for x in items), return_exceptions=True)
        return answers, db.batches

    return asyncio.run(run())


def test_a_failed_statement_gives_each_call_its_own_answer() -> None:
    """One bad item fails the statement it shares: the items are run again one by one, so the others succeed and
    the bad one's caller gets its own error."""
    answers, batches = _all_at_once(("a", "bad", "c"))
    assert answers[0] == "A" and answers[2] == "C"
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "refused: 1 items"
    assert batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_an_error_that_is_not_one_rows_answers_every_call_at_once() -> None:
    """The database out of reach: every call of the statement gets that error, none waits for a statement of its
    own to fail in turn."""
    answers, batches = _all_at_once(("a", "down", "c"))
    assert all(isinstance(a, ConnectionError) for a in answers)
    assert batches == [["a", "down", "c"]]


def test_an_items_own_error_goes_to_its_caller_alone_and_the_others_are_not_run_again() -> None:
    answers, batches = _all_at_once(("a", "own-b", "c"))
    assert answers[0] == "A" and answers[2] == "C" and isinstance(answers[1], KeyError)
    assert batches == [["a", "own-b", "c"]]


def test_what_cancelled_calls_were_given_is_handed_back_last_first() -> None:
    """Two pops whose callers left while their statement ran: their entries go back to the front of the queue one
    after the other, the second first, so that the queue keeps its order. A call whose caller left before its
    statement began is not run."""
    async def run() -> tuple[list[tuple[str, str]], str, list[list[str]]]:
        db = Statements(gated=True)
        handed_back: list[tuple[str, str]] = []

        async def orphaned(item: str, result: str) -> None:
            handed_back.append((item, result))

        together = Coalescer(db.run_many, orphaned=orphaned)
        first = asyncio.ensure_future(together("a"))
        await asyncio.sleep(0.01)  # "a" is in flight
        gone = [asyncio.ensure_future(together(x)) for x in ("b", "c")]
        kept = asyncio.ensure_future(together("d"))
        never = asyncio.ensure_future(together("e"))
        await asyncio.sleep(0.01)
        never.cancel()  # before its statement
        db.release()
        await first
        await asyncio.sleep(0.01)  # "b", "c", "d" in flight
        for call in gone:
            call.cancel()
        db.release()
        answer = await kept
        for call in [*gone, never]:
            with pytest.raises(asyncio.CancelledError):
                await call
        return handed_back, answer, db.batches

    handed_back, answer, batches = asyncio.run(run())
    assert answer == "D"
    assert handed_back == [("c", "C"), ("b", "B")]
    assert batches == [["a"], ["b", "c", "d"]]


def test_it_reports_idle_once_every_call_is_answered_and_serves_calls_after() -> None:
    """AsyncPg forgets a queue's coalescer when it reports idle: that must come once all its calls are answered,
    and a later call must be served all the same."""
    async def run() -> tuple[list[int], str]:
        db = Statements()
        idle_after: list[int] = []
        together: Coalescer[str, str] = Coalescer(db.run_many, on_idle=lambda: idle_after.append(len(db.batches)))
        await asyncio.gather(together("a"), together("b"))
        await asyncio.sleep(0)
        later = await together("c")
        await asyncio.sleep(0)
        return idle_after, later

    assert asyncio.run(run()) == ([1, 2], "C")
