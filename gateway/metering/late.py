"""Late decisions apply nothing: the bookkeeping behind consume.lua's guard and void.lua.

A decision whose answer does not reach the gateway within its budget is answered 503, so it
must never count, even if Redis runs it afterwards (a frozen server reads the command when
it wakes) or ran it and the answer was lost. Two layers make that exact:

1. **A deadline in Redis time.** The gateway keeps a lower bound of the offset between
   Redis ``TIME`` and its own monotonic clock: a ``TIME`` answer received at local ``t1``
   was produced before ``t1``, so ``T - t1`` never exceeds the true offset. The deadline
   sent with a decision is ``start + budget + offset``: never later, in Redis time, than
   the moment the gateway gives up. consume.lua applies nothing past it. This alone covers
   a decision that reaches Redis late, even if the gateway that sent it has since died.
2. **A decision id, voided after giving up.** The deadline cannot cover an answer lost on
   its way back (the script ran in time; the gateway stopped waiting before reading it).
   So an admitted decision leaves a short-lived marker (the time it was decided at), and
   the gateway, after giving up, runs void.lua for its id until Redis answers: if the
   marker is there the units are given back, otherwise a tombstone is left that a queued
   copy of the decision will see. Redis runs scripts one at a time, so exactly one of
   "decided" and "voided" comes first, and either way the decision ends up not counting.

What remains: a gateway that dies after giving up and before its void lands, while the
decision ran in time but its answer was lost, leaves that decision charged (the marker
expires after ``MARKER_TTL_MS``); likewise if Redis stays unreachable for longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.errors import StoreUnavailable
from gateway.metering.store import Charge

#: how long an admitted decision's marker, and a void's tombstone, are kept: the longest
#: outage after which a decision the gateway gave up on can still be voided exactly
MARKER_TTL_MS = 60_000
#: how often the Redis-time offset is sampled again, and how many samples are kept
SAMPLE_EVERY = 10.0
_SAMPLES = 6


@dataclass(frozen=True, slots=True)
class Pending:
    """A decision given up on, to void."""

    account_id: str
    decision_id: str
    charges: tuple[Charge, ...]


class LateDecisions:
    """Decision ids, deadlines in Redis time, and the voids still owed, for one process."""

    def __init__(
        self,
        budget: float,
        *,
        void: Callable[[str, str, Sequence[Charge]], Awaitable[None]],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = budget
        self._void = void  # runs void.lua for (account, decision id, charges)
        self._voiding: asyncio.Task[None] | None = None
        self._monotonic = monotonic
        self._prefix = secrets.token_hex(6)  # ids are unique across processes
        self._counter = itertools.count(1)
        self._offsets: deque[float] = deque(maxlen=_SAMPLES)
        self._sampled_at: float | None = None
        self.pending: dict[str, Pending] = {}

    def ticket(self) -> tuple[str, float]:
        """A new decision id and its deadline in Redis epoch seconds (0: no offset known
        yet, so only the void protects it)."""
        decision_id = f"{self._prefix}.{next(self._counter)}"
        if not self._offsets:
            return decision_id, 0.0
        return decision_id, self._monotonic() + self._budget + max(self._offsets)

    def sample_due(self) -> bool:
        at = self._sampled_at
        return at is None or self._monotonic() - at >= SAMPLE_EVERY

    def sampling(self) -> float:
        """Mark a sample as started (so only one runs); returns the local time it started."""
        self._sampled_at = self._monotonic()
        return self._sampled_at

    def observe(self, redis_time: float) -> None:
        """Record a ``TIME`` answer just received: ``T - now`` bounds the offset from below.

        The best (largest) of the last few samples is used: a slow round trip only makes
        a sample smaller, never wrong."""
        self._offsets.append(redis_time - self._monotonic())

    def give_up(self, account_id: str, decision_id: str, charges: Sequence[Charge]) -> None:
        """A decision got no answer: void it in the background until Redis confirms."""
        self.pending[decision_id] = Pending(account_id, decision_id, tuple(charges))
        if self._voiding is None or self._voiding.done():
            self._voiding = asyncio.ensure_future(self._void_until_settled())

    async def settle(self) -> None:
        """Void every pending decision now; raises StoreUnavailable if one could not be.

        Voiding twice is harmless (the second finds the tombstone), so this may run
        alongside the background loop."""
        for pending in list(self.pending.values()):
            await self._void(pending.account_id, pending.decision_id, pending.charges)
            self.pending.pop(pending.decision_id, None)

    async def _void_until_settled(self) -> None:
        backoff = 0.05
        while self.pending:
            try:
                await self.settle()
            except StoreUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def close(self, seconds: float) -> None:
        """Give the voids still owed up to ``seconds``, then stop trying."""
        voiding = self._voiding
        if voiding is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(voiding)
        voiding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await voiding
