"""A chunked body charged as it flows (gateway/metering/stream.py), unit by unit.

test_adversarial_body_meter holds the whole path over HTTP; these hold what it leaves out:
the running total a failed upload gives back, shadow mode letting a chunk past the limit
(counted without one), and a tier's own failure mode while the store is down. Memory and one
redis-server; the outage case only on Redis (the memory store cannot fail).
"""

from __future__ import annotations

import pytest

from gateway.errors import StoreUnavailable
from gateway.metering.clock import FakeClock
from gateway.metering.guard import GuardedStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge, MeterState, Store
from gateway.metering.stream import StreamedCharge
from tests.redis_servers import RedisServer
from tests.test_store_contract import Make, make_store, store

__all__ = ["Make", "make_store", "store"]  # fixtures shared with the contract suite

BYTES = Charge("storage_bytes", "7", "month", 0, 100)


class Refused(Exception):
    """What the pipeline's refusal (a 4xx answer) stands for here."""


def refuse_always(charge: Charge, state: MeterState) -> None:
    raise Refused(charge.meter, state.used)


async def used(store: Store) -> int:
    (state,) = await store.peek("7", [BYTES])
    return state.used


async def test_chunks_add_up_and_a_failed_upload_gives_back_all_of_them(
    store: Store, clock: FakeClock
) -> None:
    guard = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    streamed = StreamedCharge(guard, "7", BYTES, None, refuse_always)
    assert streamed.giveback() == []  # nothing charged yet: nothing to give back
    for size in (30, 20, 25):
        await streamed(size)
    assert streamed.total == 75 and await used(store) == 75
    (key,) = [s.key for s in await store.peek("7", [BYTES])]
    assert streamed.giveback() == [(key, 75)]
    await streamed(0)
    assert streamed.giveback() == [(key, 75)]


async def test_a_zero_byte_chunk_alone_gives_back_nothing(store: Store, clock: FakeClock) -> None:
    guard = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    streamed = StreamedCharge(guard, "7", BYTES, None, refuse_always)
    await streamed(0)
    assert streamed.giveback() == []


async def test_a_chunk_past_the_limit_is_refused_and_never_counted(
    store: Store, clock: FakeClock
) -> None:
    guard = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    streamed = StreamedCharge(guard, "7", BYTES, None, refuse_always)
    await streamed(90)
    with pytest.raises(Refused):
        await streamed(20)
    assert (streamed.total, await used(store)) == (90, 90)


async def test_in_shadow_mode_a_chunk_past_the_limit_goes_through_counted(
    store: Store, clock: FakeClock
) -> None:
    guard = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    seen: list[tuple[int, int, int | None]] = []

    def shadow(charge: Charge, state: MeterState) -> None:  # logs, lets it through
        seen.append((charge.cost, state.used, state.limit))

    streamed = StreamedCharge(guard, "7", BYTES, None, shadow)
    await streamed(90)
    await streamed(20)
    # refused at 90 of 100, then counted without a limit: usage shows the overrun
    assert seen == [(20, 90, 100)]
    assert (streamed.total, await used(store)) == (110, 110)
    (key,) = [s.key for s in await store.peek("7", [BYTES])]
    assert streamed.giveback() == [(key, 110)]


async def test_a_tier_that_fails_open_streams_through_an_outage(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    guard = GuardedStore(
        RedisStore(own_redis.url, clock=clock, timeout_ms=200),
        mode="closed",
        allowance=1000,
        clock=clock,
    )
    try:
        own_redis.kill()
        # the gateway fails closed, this tier open: its chunks go on, from the local allowance
        streamed = StreamedCharge(guard, "7", BYTES, "open", refuse_always)
        await streamed(40)
        await streamed(40)
        assert streamed.total == 80 and guard.degraded
        closed = StreamedCharge(guard, "7", BYTES, None, refuse_always)
        with pytest.raises(StoreUnavailable):
            await closed(40)
        assert closed.total == 0
    finally:
        await guard.close()
