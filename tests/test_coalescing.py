"""Concurrent calls sharing one statement (store/coalescing.py): who goes with whom, and what each caller gets back
when the statement fails or the caller is gone."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.server.store.coalescing import Coalescer


class Statements:
    """A stand-in for the database: records each statement's items; an item "bad" fails any statement holding it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def run_many(self, items: list[str]) -> list[str]:
        self.batches.append(items)
        await self.release.wait()
        if "bad" in items:
            raise ValueError(f"refused: {len(items)} items")
        return [item.upper() for item in items]


def test_the_first_call_goes_alone_and_those_arriving_meanwhile_go_together() -> None:
    async def run() -> tuple[list[str], list[list[str]]]:
        db = Statements()
        together = Coalescer(db.run_many)
        first = asyncio.ensure_future(together("a"))
        await asyncio.sleep(0.01)  # its statement is in flight
        later = [asyncio.ensure_future(together(x)) for x in ("b", "c", "d")]
        await asyncio.sleep(0.01)
        db.release.set()
        answers = await asyncio.gather(first, *later)
        return answers, db.batches

    answers, batches = asyncio.run(run())
    assert answers == ["A", "B", "C", "D"]
    assert batches == [["a"], ["b", "c", "d"]]


def test_a_statement_holds_at_most_its_limit() -> None:
    async def run() -> list[list[str]]:
        db = Statements()
        db.release.set()
        together = Coalescer(db.run_many, most=2)
        await asyncio.gather(*(together(x) for x in "abcde"))
        return db.batches

    assert asyncio.run(run()) == [["a", "b"], ["c", "d"], ["e"]]


def test_a_failed_statement_gives_each_call_its_own_answer() -> None:
    """One bad item fails the statement it shares: the items are run again one by one, so the others succeed and
    the bad one's caller gets its own error."""
    async def run() -> tuple[list[object], list[list[str]]]:
        db = Statements()
        db.release.set()
        together = Coalescer(db.run_many)
        answers = await asyncio.gather(*(together(x) for x in ("a", "bad", "c")), return_exceptions=True)
        return answers, db.batches

    answers, batches = asyncio.run(run())
    assert answers[0] == "A" and answers[2] == "C"
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "refused: 1 items"
    assert batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_what_a_cancelled_call_was_given_is_handed_back() -> None:
    async def run() -> tuple[list[tuple[str, str]], str]:
        db = Statements()
        handed_back: list[tuple[str, str]] = []

        async def orphaned(item: str, result: str) -> None:
            handed_back.append((item, result))

        together = Coalescer(db.run_many, orphaned=orphaned)
        gone = asyncio.ensure_future(together("a"))
        kept = asyncio.ensure_future(together("b"))
        await asyncio.sleep(0.01)
        gone.cancel()
        db.release.set()
        answer = await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
        return handed_back, answer

    handed_back, answer = asyncio.run(run())
    assert handed_back == [("a", "A")] and answer == "B"


def test_it_reports_idle_once_every_call_is_answered() -> None:
    async def run() -> tuple[int, bool]:
        db = Statements()
        db.release.set()
        idle: list[bool] = []
        together: Coalescer[str, str] = Coalescer(db.run_many, on_idle=lambda: idle.append(True))
        await asyncio.gather(together("a"), together("b"))
        await asyncio.sleep(0)
        return len(idle), together.idle

    assert asyncio.run(run()) == (1, True)
