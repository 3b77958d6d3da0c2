"""Work begun ahead of the point that needs it, in a thread: taken there, its result or its exception, as if it had
been done there (the executor checks a task's code out while it reports the task started)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Ahead(Generic[T]):
    def __init__(self, work: Callable[[], T], name: str):
        self._work = work
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as exc:  # noqa: BLE001 - raised again in the thread that takes the result
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> T:
        """Wait for the work; its result, or its exception raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return cast(T, self._value)
