"""Rate meters in the store: GCRA exactness, atomicity with the quotas, refunds and keys.

Run against memory, one redis-server and the Redis Cluster, each with the FakeClock (the
Redis store hands the script the fake ``now``; the script's own TIME is for production).

The definition held here (gateway/metering/rates.py): ``burst`` is how many unit requests a
full bucket admits at one instant. So of many racing requests at t=0 exactly ``burst`` are
admitted, and after the clock moves ``k`` emission intervals exactly ``k`` more.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.metering import rates
from gateway.metering.clock import FakeClock
from gateway.metering.keys import account_tag
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge, Store
from gateway.policy.model import Rate
from tests.test_store_contract import Make, make_store

__all__ = ["make_store"]  # the contract suite's fixture: stores sharing one backend

STORES = ["memory", "redis", "cluster"]

TEN_PER_SECOND = Rate(count=10, seconds=1, burst=5)  # one unit back every 100 ms


def rate(cost: int = 1, limit: Rate = TEN_PER_SECOND, scope: str = "key_7") -> Charge:
    return Charge("request_rate", scope, None, cost, limit.burst, rate=limit)


def calls(limit: int | None) -> Charge:
    return Charge("api_calls", "42", "month", 1, limit)


async def race(stores: list[Store], charges: list[Charge], n: int) -> int:
    """Fire ``n`` decisions at once over the stores; how many were admitted."""
    results = await asyncio.gather(
        *(stores[i % len(stores)].consume("42", charges) for i in range(n))
    )
    return sum(decision.admitted for decision in results)


async def test_a_racing_burst_admits_exactly_burst_then_exactly_the_rate(
    make_store: Make, clock: FakeClock
) -> None:
    stores = [make_store() for _ in range(4)]
    assert await race(stores, [rate()], 60) == 5  # the burst, at one instant
    assert await race(stores, [rate()], 60) == 0
    interval = TEN_PER_SECOND.emission_us / 1_000_000
    for k in (1, 3, 2):
        clock.advance(k * interval)
        assert await race(stores, [rate()], 60) == k
    # just short of one interval gives nothing back
    clock.advance(interval * 0.99)
    assert await race(stores, [rate()], 20) == 0


async def test_a_full_bucket_is_refilled_after_burst_intervals_and_no_more(
    make_store: Make, clock: FakeClock
) -> None:
    store = make_store()
    assert await race([store], [rate()], 5) == 5
    clock.advance(60)  # idle a minute: the bucket holds its burst, never more
    assert await race([store], [rate()], 20) == 5


async def test_a_cost_is_taken_from_the_bucket_whole(make_store: Make) -> None:
    store = make_store()
    assert (await store.consume("42", [rate(cost=3)])).admitted
    refused = await store.consume("42", [rate(cost=3)])  # 2 left, 3 asked: nothing taken
    assert not refused.admitted
    assert refused.states[0].remaining == 2
    assert (await store.consume("42", [rate(cost=2)])).admitted


async def test_a_rate_refusal_consumes_no_quota(make_store: Make) -> None:
    store = make_store()
    for _ in range(5):
        assert (await store.consume("42", [calls(100), rate()])).admitted
    refused = await store.consume("42", [calls(100), rate()])
    assert (refused.admitted, refused.refused) == (False, 1)
    (quota,) = await store.peek("42", [calls(100)])
    assert quota.used == 5


async def test_a_quota_refusal_consumes_no_rate(make_store: Make) -> None:
    store = make_store()
    assert (await store.consume("42", [calls(1), rate()])).admitted
    for _ in range(3):
        refused = await store.consume("42", [calls(1), rate()])
        assert (refused.admitted, refused.refused) == (False, 0)
    (bucket,) = await store.peek("42", [rate()])
    assert bucket.used == 1 and bucket.remaining == 4


async def test_when_both_refuse_the_quota_is_named_in_any_order(make_store: Make) -> None:
    store = make_store()
    assert (await store.consume("42", [rate(cost=5), calls(1)])).admitted
    refused = await store.consume("42", [rate(), calls(1)])
    assert (refused.admitted, refused.refused) == (False, 1)  # the caller's order
    assert [s.meter for s in refused.states] == ["request_rate", "api_calls"]


async def test_a_refund_gives_a_unit_back_and_never_more_than_full(
    make_store: Make, clock: FakeClock
) -> None:
    store = make_store()
    decisions = [await store.consume("42", [rate()]) for _ in range(5)]
    assert not (await store.consume("42", [rate()])).admitted
    await store.release("42", [rates.refund(decisions[-1].states[0], 1)])
    assert (await store.consume("42", [rate()])).admitted
    assert not (await store.consume("42", [rate()])).admitted
    # refunds on a full bucket give nothing beyond the burst
    clock.advance(60)
    await store.release("42", [rates.refund(decisions[0].states[0], 1)] * 3)
    assert await race([store], [rate()], 20) == 5


async def test_buckets_are_apart_per_scope_and_share_the_accounts_hash_tag(
    make_store: Make,
) -> None:
    store = make_store()
    assert await race([store], [rate(scope="key_1")], 10) == 5
    assert await race([store], [rate(scope="key_2")], 10) == 5
    decision = await store.consume("42", [rate(scope="10.0.0.1"), calls(None)])
    assert all(account_tag("42") in state.key for state in decision.states)


async def test_state_reports_burst_remaining_and_when_full(
    make_store: Make, clock: FakeClock
) -> None:
    store = make_store()
    decision = await store.consume("42", [rate(cost=2)])
    (state,) = decision.states
    assert (state.limit, state.used, state.remaining) == (5, 2, 3)
    assert state.reset_at == pytest.approx(clock.now() + 0.2, abs=1e-6)
    refused = await store.consume("42", [rate(cost=4)])
    assert rates.retry_after(TEN_PER_SECOND, refused.states[0], 4, clock.now()) == 1


async def test_retry_after_is_whole_seconds_rounded_up(make_store: Make, clock: FakeClock) -> None:
    two = Rate(count=2, seconds=1, burst=4)  # a unit back every 500 ms
    store = make_store()
    assert (await store.consume("42", [rate(cost=4, limit=two)])).admitted
    refused = await store.consume("42", [rate(cost=3, limit=two)])
    assert not refused.admitted
    # three units: 1.5 s away, so 2; and from 0.25 s later, still 2 (1.25 s)
    assert rates.retry_after(two, refused.states[0], 3, clock.now()) == 2
    clock.advance(0.25)
    (state,) = await store.peek("42", [rate(limit=two)])
    assert rates.retry_after(two, state, 3, clock.now()) == 2
    clock.advance(1.25)
    assert (await store.consume("42", [rate(cost=3, limit=two)])).admitted


@pytest.mark.parametrize("url", ["redis_url", "cluster_url"])
async def test_void_gives_back_a_rate_unit_whose_answer_was_lost(
    url: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    """A decision that ran but whose answer never arrived (sent by hand with its id, as
    tests/test_store_contract.py does for quotas): voiding it gives its rate unit back too."""
    store = RedisStore(request.getfixturevalue(url), clock=clock, timeout_ms=2000)
    charges = [calls(None), rate(cost=2)]
    try:
        keys, args = store.consume_call("42", charges, guard=(0, "lost-1", 60000))
        assert int((await store._script("consume", keys, args))[0]) == 1
        (bucket,) = await store.peek("42", [rate()])
        assert bucket.remaining == 3
        await store._void("42", "lost-1", charges)
        (bucket,) = await store.peek("42", [rate()])
        assert bucket.remaining == 5
        assert (await store.peek("42", [calls(None)]))[0].used == 0
    finally:
        await store.close()
