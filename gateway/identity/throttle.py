"""Login throttling: failed attempts per account and per client address, kept in the store.

Every attempt first takes one unit of two budgets in the current fixed window: the
account's (named by a digest of the email, so unknown emails are throttled exactly like
known ones and no email is written into a key) and the client address's. A full budget is
a 429 with Retry-After until the window ends, before any password is hashed. A successful
login gives both units back, so only failures accumulate. Taking the unit before the
password is checked, in the store's atomic consume, means a burst of concurrent guesses
cannot slip past the limit, and workers and replicas sharing a Redis store share the count.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from gateway.errors import QuotaExceeded
from gateway.metering.clock import Clock
from gateway.metering.store import Charge, Store
from gateway.metering.windows import iso

METER = "login_attempts"


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_account: int | None = 10  # None: no per-account limit
    per_address: int | None = 100
    window_seconds: float = 900.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """The units an admitted attempt holds: (store account id, exact key) pairs."""

    held: tuple[tuple[str, str], ...]


class LoginThrottle:
    def __init__(self, store: Store, clock: Clock, limits: LoginLimits) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits

    async def begin(self, email: str, address: str) -> Attempt:
        """Take one attempt for ``email`` from ``address``, or raise a 429 QuotaExceeded."""
        now = self._clock.now()
        window = self._limits.window_seconds
        bucket = str(math.floor(now / window))
        digest = hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()[:32]
        budgets = (
            (f"login:{digest}", self._limits.per_account, "this account"),
            (f"client:{address}", self._limits.per_address, f"address {address}"),
        )
        held: list[tuple[str, str]] = []
        for owner, limit, whom in budgets:
            if limit is None:
                continue
            # a day window holds the key; the bucket in the scope makes it a window of its own
            charge = Charge(METER, bucket, "day", 1, limit)
            decision = await self._store.consume(owner, [charge])
            if not decision.admitted:
                await self.succeeded(Attempt(tuple(held)))  # nothing attempted after all
                ends = (math.floor(now / window) + 1) * window
                raise _throttled(whom, limit, window, ends, now)
            held.append((owner, decision.states[0].key))
        return Attempt(tuple(held))

    async def succeeded(self, attempt: Attempt) -> None:
        """Give an attempt's units back: a right password is not a failure."""
        for owner, key in attempt.held:
            await self._store.release(owner, [(key, 1)])


def _throttled(whom: str, limit: int, window: float, ends: float, now: float) -> QuotaExceeded:
    retry_after = max(math.ceil(ends - now), 1)
    return QuotaExceeded(
        f"login throttled for {whom}",
        status=429,
        body={
            "error": "Too many requests",
            "reason": (
                f"Too many failed logins for {whom}: at most {limit} every "
                f"{window / 60:g} minutes. Try again after the reset."
            ),
            "limit": limit,
            "reset": iso(ends),
            "retryable": True,
        },
        headers={"Retry-After": str(retry_after)},
    )
