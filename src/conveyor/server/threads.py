"""The threads that serve API calls off the event loop: every call that reads or writes PostgreSQL, and large bodies
and answers on either database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# As many calls at once as the PostgreSQL pool serves before its overflow (store/database.py: 16, then 48 more).
API_THREADS = 40
_pool = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="api")


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on an API thread. A plain executor rather than anyio's `to_thread`: with calls in flight it costs
    a third of the CPU per hop on our machines, and on PostgreSQL every call makes one."""
    return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)
