"""Per-process caches of keys and accounts, so a warm request costs the store one round trip.

Staleness bound: a registry write that changes a key or an account (revoke a key, change a
tier, create an account) drops the entry in its own process at once and publishes on
``keys.INVALIDATION_CHANNEL``; every other process drops it as soon as the message arrives
(normally milliseconds); a store read that was in flight when a change was announced does
not fill the cache (``generation``), so it cannot put back what the change replaced. If
notifications are lost (the store is unreachable), entries still
expire after ``ttl`` seconds, and a listener that reconnects clears its whole cache because it
may have missed messages. So a revoked key or a changed tier is honoured by every process
within ``ttl`` seconds at worst (``identity_cache_ttl_seconds``, default 5). Nothing that
decides a write reads this cache: writes go through ``records.change``.

While the store is unreachable, the registry answers from expired entries too (``stale``):
no key can be revoked nor tier changed while the store is down, so this serves only what was
true when it went down, and lets a fail-open gateway keep identifying callers it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from gateway.errors import StoreUnavailable
from gateway.metering.keys import INVALIDATION_CHANNEL
from gateway.metering.store import Store
from gateway.metrics import CacheStats, Metrics

log = logging.getLogger("gateway")

V = TypeVar("V")
_MISSING = object()


class TtlCache(Generic[V]):
    """A bounded LRU map whose entries also expire ``ttl`` seconds after they were stored."""

    def __init__(
        self,
        *,
        max_entries: int,
        ttl: float,
        now: Callable[[], float] = time.monotonic,
        stats: CacheStats | None = None,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl
        self._now = now
        self._stats = stats

    def get(self, key: str) -> V | object:
        """The cached value, or ``MISSING`` (a cached value may itself be None)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._now():
            # an expired entry stays (LRU-bounded) as the last known answer; see ``stale``
            if self._stats is not None:
                self._stats.misses.inc()
            return _MISSING
        self._entries.move_to_end(key)
        if self._stats is not None:
            self._stats.hits.inc()
        return entry[1]

    def stale(self, key: str) -> V | object:
        """The last value stored, expired or not, or ``MISSING``: for when the store is down."""
        entry = self._entries.get(key)
        return _MISSING if entry is None else entry[1]

    def put(self, key: str, value: V) -> None:
        if self._max <= 0 or self._ttl <= 0:
            return
        self._entries[key] = (self._now() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            if self._stats is not None:
                self._stats.evictions.inc()
        self._sized()

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)
        self._sized()

    def clear(self) -> None:
        self._entries.clear()
        self._sized()

    def _sized(self) -> None:
        if self._stats is not None:
            self._stats.entries.set(len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


MISSING = _MISSING


class IdentityCache:
    """Keys by digest, accounts by id; messages ``key:<digest>``, ``account:<id>`` drop one."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl: float = 5.0,
        now: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.ttl = ttl
        #: grows with every invalidation: a read that started before one must not fill the
        #: cache with what it read (it may predate the change announced)
        self.generation = 0
        self.keys: TtlCache[object] = TtlCache(
            max_entries=max_entries,
            ttl=ttl,
            now=now,
            stats=None if metrics is None else metrics.cache("keys"),
        )
        self.accounts: TtlCache[object] = TtlCache(
            max_entries=max_entries,
            ttl=ttl,
            now=now,
            stats=None if metrics is None else metrics.cache("accounts"),
        )

    def invalidate(self, message: str) -> None:
        self.generation += 1
        kind, _, ident = message.partition(":")
        if kind == "key":
            self.keys.discard(ident)
        elif kind == "account":
            self.accounts.discard(ident)
        else:
            self.clear()

    def clear(self) -> None:
        self.generation += 1
        self.keys.clear()
        self.accounts.clear()


async def follow(store: Store, cache: IdentityCache, *, max_backoff: float = 5.0) -> None:
    """Apply invalidations published by every process, until cancelled; never raises."""
    backoff = 0.1
    missed = False
    while True:
        try:
            # aclosing: a cancelled follower closes its subscription now, while the store is
            # still open, not whenever the event loop finalises an abandoned generator
            async with contextlib.aclosing(store.listen(INVALIDATION_CHANNEL)) as messages:
                async for message in messages:
                    if message:
                        cache.invalidate(message)
                        continue
                    # subscribed; whatever was published while we were not listening is unknown
                    if missed:
                        cache.clear()
                    backoff, missed = 0.1, False
        except StoreUnavailable as exc:
            log.warning("identity cache notifications lost (%s); retrying", exc)
        missed = True
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
