"""Task documents as this server process last stored or read them on PostgreSQL, so that an enqueue can save its task
in one statement without reading it first.

A copy is only ever a guess: the enqueue's write holds only if the stored document is still exactly this text
(`enqueue_write` in sql.py). A copy gone stale (changed by another server process, or from a transaction that rolled
back) costs the enqueue a read and a second write, never a lost change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_BYTES = 16 << 20  # the copies kept, the least recently used going first
# Larger documents are neither kept nor read on the event loop (parsing and writing one back would hold up every
# other call): their enqueues take the locked path, in a thread.
MAX_DOC_BYTES = 64 << 10


class KnownDocs:
    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._docs: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # API threads store, the event loop reads

    def remember(self, task_id: str, text: str) -> None:
        with self._lock:
            old = self._docs.pop(task_id, None)
            if old is not None:
                self._bytes -= len(old)
            if len(text) > MAX_DOC_BYTES:
                return
            self._docs[task_id] = text
            self._bytes += len(text)
            while self._bytes > self.max_bytes:
                _, dropped = self._docs.popitem(last=False)
                self._bytes -= len(dropped)

    def get(self, task_id: str) -> str | None:
        with self._lock:
            text = self._docs.get(task_id)
            if text is not None:
                self._docs.move_to_end(task_id)
            return text


TASKS = KnownDocs()  # one per server process: the guesses are about whichever database holds that id
