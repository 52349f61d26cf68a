"""Small asyncio helpers: stopping background tasks, budgets that measure the far side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


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


class LoopLag:
    """How long this process's event loop could not run what was due: the sum of how late a
    ticker fired. Busy callbacks and a process the OS did not schedule both count. The
    ticker runs only while someone measures (``enter`` to ``leave``), so an idle process
    is not woken for it."""

    def __init__(self, interval: float = 0.01) -> None:
        self.total = 0.0
        self._interval = interval
        self._due = 0.0
        self._users = 0
        self._handle: asyncio.TimerHandle | None = None

    def enter(self) -> None:
        self._users += 1
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self._interval
            self._handle = loop.call_at(self._due, self._tick, loop)

    def leave(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._handle is not None:
            self._users = 0
            self._handle.cancel()
            self._handle = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.total += max(now - self._due, 0.0)
        self._due = now + self._interval
        self._handle = loop.call_at(self._due, self._tick, loop)


@contextlib.asynccontextmanager
async def exchange_budget(seconds: float, lag: LoopLag) -> AsyncIterator[None]:
    """Raise TimeoutError once the block has waited ``seconds`` of time this process's loop
    was free to notice an answer, and the loop has had one more turn to deliver it.

    A plain ``asyncio.timeout`` counts wall time, so on a busy loop (or a process the OS did
    not schedule) the wait for the loop is blamed on whoever was asked, even when the answer
    sits in a buffer and only this task's next turn is missing. Here the time ``lag`` saw the
    loop late is added to the budget, and a due timer first lets the I/O callbacks of its
    turn, and the task steps they woke, run; only a block still waiting then is cut off.
    """
    loop = asyncio.get_running_loop()
    lag.enter()
    started, lag_before = loop.time(), lag.total
    finished = False
    handle: asyncio.Handle | None = None

    def expire(timeout: asyncio.Timeout, grace: bool) -> None:
        nonlocal handle
        if finished:
            return
        if grace:
            left = seconds - (loop.time() - started - (lag.total - lag_before))
            if left > 0:  # the loop was late for part of the budget: that part is not spent
                handle = loop.call_at(loop.time() + left, expire, timeout, True)
            else:
                handle = loop.call_soon(expire, timeout, False)
        else:
            timeout.reschedule(loop.time())

    async with asyncio.timeout(None) as timeout:
        handle = loop.call_at(started + seconds, expire, timeout, True)
        try:
            yield
        finally:
            finished = True
            lag.leave()
            if handle is not None:
                handle.cancel()
