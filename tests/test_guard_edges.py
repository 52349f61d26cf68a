"""The fail-open guard in this process: a store down at start, records deleted through it.

test_store_startup shows the start through a `gateway serve` subprocess, which mutation
testing cannot trace; here GuardedStore runs in the test's own interpreter. A store that is
down exists only on Redis (the memory store cannot fail), so the start case runs on a
redis-server of its own; record deletion runs on memory and Redis.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.errors import StoreUnavailable
from gateway.metering.clock import FakeClock
from gateway.metering.guard import GuardedStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge, Store
from tests.redis_servers import RedisServer
from tests.test_store_contract import Make, make_store, store

__all__ = ["Make", "make_store", "store"]  # fixtures shared with the contract suite


async def test_a_store_down_at_start_starts_degraded_says_so_and_recovers(
    own_redis: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.kill()
    inner = RedisStore(own_redis.url, clock=clock, timeout_ms=200)
    guard = GuardedStore(inner, mode="open", allowance=5, clock=clock, min_backoff=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway"):
            await guard.start()
        assert guard.degraded
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        # the operator reads when it went and what the gateway does meanwhile
        assert warning.startswith("store unavailable at start ("), warning
        assert warning.endswith("): failing open until it answers; probing with backoff")
        charge = Charge("api_calls", "7", "month", 1, 100)
        decision = await guard.consume("7", [charge])
        assert decision.admitted and decision.degraded  # fail-open, from the local allowance
        with pytest.raises(StoreUnavailable):
            await guard.delete_record("account", "7")
        own_redis.start()
        async with asyncio.timeout(15):  # the backoff probe finds it back
            while guard.degraded:
                await asyncio.sleep(0.05)
        assert (await guard.consume("7", [charge])).degraded is False
    finally:
        await guard.close()


async def test_a_record_deleted_through_the_guard_is_gone_once(
    store: Store, clock: FakeClock
) -> None:
    guard = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    await guard.put_record("account", "7", {"tier": "free"})
    await guard.put_record("project", "7", {"name": "kept"})
    assert await guard.delete_record("account", "7") is True
    assert await guard.delete_record("account", "7") is False
    assert await guard.get_record("account", "7") is None
    # only that kind's record: the same id under another kind stays
    assert await guard.get_record("project", "7") == {"name": "kept"}
