"""Small asyncio helpers shared by the long-lived background tasks."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[object], *, every: float = 0.1) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while it runs on.

    A single cancel is not enough for tasks blocked in redis-py: a cancellation that lands as
    one of its internal timeouts expires is swallowed (redis/redis-py#2551), and the task
    would carry on reading forever, so shutdown would hang.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        # retrieve the outcome so asyncio does not warn that it was never looked at
        task.exception()
