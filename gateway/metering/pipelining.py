"""Auto-pipelining: the script calls issued in one loop turn go to Redis in one write.

Concurrent requests each issue one EVALSHA. Sent one by one, each needs a pooled connection
and a round trip of its own, and a burst opens dozens of connections at once. Here every
call queued during a loop turn waits for that turn's end, then the batch is written as one
non-transactional pipeline on one connection and the replies are matched back in order:
one EVALSHA per call still, one write and one read per batch. A reply that is an error
fails only its own call. At most ``BATCHES`` batches are out at once: while they are, new
calls gather into the next one, so a burst needs a few connections, not one per request,
and the wait for a batch to go out is queueing in this process, not the store's time.

The batch runs under the store's ``run``: one connection slot; then a pooled connection,
opened if need be outside the budget (a TCP connect and a handshake take several loop turns
on a busy process; redis-py's connect timeout bounds them); then the exchange under the
budget, failures translated. A batch that gets no answer in time fails every call in it, as
the calls would have failed one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

#: the store's runner: ``run(exchange, connect)`` takes a connection slot, then ``connect``
#: (outside the budget), then ``exchange`` under the budget, and translates failures
Run = Callable[[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]], Awaitable[Any]]
#: a batch larger than this is split: one huge write would hold a connection for long
MAX_BATCH = 256
#: batches out at once (so connections in use); later commands gather into the next batch
BATCHES = 4


class AtSend:
    """An argument computed when its batch is written (a deadline that must start then)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __str__(self) -> str:  # what it would be if sent now (bench/redis_decisions.py)
        return str(self.make())


def resolve(args: Sequence[Any]) -> list[Any]:
    """``args`` with every AtSend computed now."""
    return [a.make() if isinstance(a, AtSend) else a for a in args]


class _Call:
    __slots__ = ("args", "future")

    def __init__(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        self.args = args
        self.future = future


class Pipeliner:
    """Collects commands issued in one loop turn and sends them as one pipeline."""

    def __init__(self, client: Any, run: Run, *, batches: int = BATCHES) -> None:
        self._client = client
        self._run = run
        self._batches = batches
        self._queue: list[_Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        """Run one command in the next batch; its reply, or its own error raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(args, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._scheduled and self._queue and len(self._sending) < self._batches:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._schedule()  # what queued while every batch was out goes next, as one

    async def _send(self, batch: Sequence[_Call]) -> None:
        live = [call for call in batch if not call.future.done()]  # cancelled: not sent
        if not live:
            return

        pipe = self._client.pipeline(transaction=False)

        async def connect() -> None:
            pipe.connection = await pipe.connection_pool.get_connection()

        async def exchange() -> list[Any]:
            for call in live:
                pipe.execute_command(*resolve(call.args))
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

        try:
            replies = await self._run(exchange, connect)
        except BaseException as exc:
            for call in live:
                if not call.future.done():
                    call.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            await pipe.reset()  # gives the connection back, if the batch got that far
        for call, reply in zip(live, replies, strict=True):
            if call.future.done():
                continue
            if isinstance(reply, Exception):
                call.future.set_exception(reply)
            else:
                call.future.set_result(reply)

    async def close(self) -> None:
        for task in list(self._sending):
            await asyncio.gather(task, return_exceptions=True)
