"""The ledger while the store is down: fail-open honours packages and overage switches,
and what it admitted is written back without being billed."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.errors import StoreUnavailable
from gateway.metering.clock import FakeClock
from gateway.metering.guard import GuardedStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge
from tests.redis_servers import RedisServer


def calls(*, overage: bool) -> Charge:
    # a limit of 2 plus 3 package units: capacity 5
    return Charge("logic_engine_calls", "7", "month", 1, 2, 3, overage)


async def test_fail_open_caps_at_capacity_then_writes_back_unbilled(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    inner = RedisStore(own_redis.url, clock=clock, timeout_ms=200)
    store = GuardedStore(inner, mode="open", allowance=100, clock=clock, min_backoff=0.05)
    try:
        assert (await store.consume("7", [calls(overage=False)])).admitted
        own_redis.freeze()
        try:
            # the health check notices first, so no consume is left in flight to land later
            with contextlib.suppress(StoreUnavailable):
                await store.ping()
            assert store.degraded
            # overage off: the local allowance stops at the capacity, packages included
            local = [await store.consume("7", [calls(overage=False)]) for _ in range(6)]
            assert [d.admitted for d in local] == [True] * 5 + [False]
            assert all(d.degraded for d in local)
            # overage on: only the local allowance bounds it
            more = [await store.consume("7", [calls(overage=True)]) for _ in range(4)]
            assert all(d.admitted for d in more)
        finally:
            own_redis.thaw()
        async with asyncio.timeout(15):
            while store.degraded:
                await asyncio.sleep(0.05)
        (state,) = await store.peek("7", [calls(overage=False)])
        # 1 before the outage + 9 admitted locally, counted; none of the 9 billed as overage
        assert state.used == 10
        assert (state.from_package, state.from_overage) == (0, 0)
        decision = await store.consume("7", [calls(overage=True)])
        assert decision.states[0].from_overage == 1  # after recovery, by position as always
    finally:
        await store.close()
