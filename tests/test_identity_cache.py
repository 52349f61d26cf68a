"""The per-process identity cache: bounded, expiring, and emptied by invalidations.

No store: the cache is in-process; invalidations arriving over a real store's pub/sub are
tested in test_redis_e2e.py (a revoked key reaches every process on redis-server)."""

from __future__ import annotations

from gateway.identity.cache import MISSING, IdentityCache, TtlCache


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_the_ttl() -> None:
    ticks = Ticks()
    cache: TtlCache[str] = TtlCache(max_entries=10, ttl=5.0, now=ticks)
    cache.put("k", "v")
    ticks.now = 4.9
    assert cache.get("k") == "v"
    ticks.now = 5.0
    assert cache.get("k") is MISSING
    # kept as the last known answer for when the store cannot be asked
    assert cache.stale("k") == "v"
    assert cache.stale("other") is MISSING


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: TtlCache[int] = TtlCache(max_entries=2, ttl=60.0, now=Ticks())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, MISSING, 3)
    assert len(cache) == 2


def test_a_cached_absence_is_told_apart_from_a_miss() -> None:
    cache: TtlCache[object] = TtlCache(max_entries=2, ttl=60.0, now=Ticks())
    cache.put("gone", None)
    assert cache.get("gone") is None
    assert cache.get("never") is MISSING


def test_invalidations_drop_one_entry_and_unknown_messages_drop_all() -> None:
    cache = IdentityCache(ttl=60.0, now=Ticks())
    cache.keys.put("d1", "key")
    cache.accounts.put("7", "account")
    cache.accounts.put("8", "account")
    cache.invalidate("account:7")
    assert cache.accounts.get("7") is MISSING
    assert cache.accounts.get("8") == "account"
    cache.invalidate("key:d1")
    assert cache.keys.get("d1") is MISSING
    cache.invalidate("everything")
    assert cache.accounts.get("8") is MISSING


def test_a_zero_ttl_disables_caching() -> None:
    cache = IdentityCache(ttl=0.0, now=Ticks())
    cache.keys.put("d1", "key")
    assert cache.keys.get("d1") is MISSING
