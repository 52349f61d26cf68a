"""Leased counters (hot accounts): exact at the limit, few store calls, units given back.

Every test runs on the memory store, a single Redis and a Cluster (lease.lua lives in one
slot); several ``Leases`` on one backend stand for several gateway processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from gateway.aio import cancel_and_wait
from gateway.metering.clock import FakeClock
from gateway.metering.guard import GuardedStore
from gateway.metering.keys import history_key
from gateway.metering.leases import Leases
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge, Granted, Lease, Store
from gateway.metering.windows import window, window_ttl
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.loader import parse_policy
from tests.ops_policy import ops_policy
from tests.test_store_contract import Make, make_store, store

__all__ = ["Make", "make_store", "store"]  # fixtures shared with the contract suite


def calls(limit: int = 100, lease: int = 10, *, cost: int = 1, package: int = 0) -> Charge:
    return Charge("api_calls", "42", "month", cost, limit, package, lease=lease)


class Counting:
    """A Store that counts the calls leases make to it, passing them on."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        if name in ("consume", "lease", "release"):
            self.calls.append(name)
        return getattr(self.inner, name)


def process(store: Store, clock: FakeClock, metrics: Metrics | None = None) -> Leases:
    guarded = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    return Leases(guarded, clock, metrics=metrics)


async def used(store: Store, charge: Charge) -> int:
    (state,) = await store.peek("42", [charge])
    return state.used


async def test_four_processes_admit_exactly_the_limit_between_them(
    make_store: Make, clock: FakeClock
) -> None:
    processes = [process(make_store(), clock) for _ in range(4)]
    charge = calls(limit=95, lease=10)

    async def caller(leases: Leases) -> bool:
        decision = await leases.consume("42", [charge], failure_mode=None)
        return decision.admitted

    results = await asyncio.gather(*(caller(processes[i % 4]) for i in range(160)))
    # near the limit the units other processes still hold are refused: never more than 95
    admitted = sum(results)
    assert admitted <= 95
    for leases in processes:
        await leases.close()
    # once every lease is back, the rest of the allowance is there to be taken, exactly
    store = make_store()
    assert await used(store, charge) == admitted
    more = [await processes[0].consume("42", [charge], failure_mode=None) for _ in range(100)]
    assert admitted + sum(d.admitted for d in more) == 95
    assert await used(store, charge) == 95


async def test_a_leased_caller_makes_one_store_call_per_lease(
    store: Store, clock: FakeClock
) -> None:
    counting = Counting(store)
    registry = CollectorRegistry()
    leases = process(counting, clock, Metrics(registry))  # type: ignore[arg-type]
    for _ in range(50):
        assert (await leases.consume("42", [calls(lease=10)], failure_mode=None)).admitted
    assert counting.calls == ["lease"] * 5
    assert registry.get_sample_value("gateway_leases_taken_total") == 5
    assert registry.get_sample_value("gateway_lease_admissions_total") == 50


async def test_concurrent_requests_wait_for_one_refill(store: Store, clock: FakeClock) -> None:
    counting = Counting(store)
    leases = process(counting, clock)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(leases.consume("42", [calls(lease=20)], failure_mode=None) for _ in range(20))
    )
    assert all(d.admitted for d in results)
    assert counting.calls == ["lease"]


async def test_remaining_counts_down_with_local_admissions(store: Store, clock: FakeClock) -> None:
    leases = process(store, clock)
    first = await leases.consume("42", [calls(limit=100, lease=10)], failure_mode=None)
    second = await leases.consume("42", [calls(limit=100, lease=10)], failure_mode=None)
    assert [first.states[0].remaining, second.states[0].remaining] == [99, 98]
    # the store counts the whole lease as used until it comes back
    assert await used(store, calls()) == 10


async def test_a_refund_returns_to_the_lease_not_the_store(store: Store, clock: FakeClock) -> None:
    counting = Counting(store)
    leases = process(counting, clock)  # type: ignore[arg-type]
    decision = await leases.consume("42", [calls(lease=2)], failure_mode=None)
    await leases.release("42", [(decision.states[0].key, 1)])
    assert leases.held == 2
    assert counting.calls == ["lease"]
    for _ in range(2):
        assert (await leases.consume("42", [calls(lease=2)], failure_mode=None)).admitted
    assert counting.calls == ["lease"]


async def test_a_rolled_window_gives_unused_units_back(store: Store, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    leases = process(store, clock, Metrics(registry))
    charge = Charge("api_calls", "42", "month", 1, 100, history_ttl=8 * 86400, lease=10)
    for _ in range(3):
        assert (await leases.consume("42", [charge], failure_mode=None)).admitted
    day, _ = window("day", clock.now())
    day_key = history_key("42", "api_calls", "42", day)
    old_key = (await store.peek("42", [charge]))[0].key
    assert await store.read("42", [old_key, day_key]) == [10, 10]
    clock.advance(6 * 86400)  # from the 25th of November to the 1st of December
    await leases.give_back(rolled_only=True)
    # the window's count and the day's history keep only what was admitted
    assert await store.read("42", [old_key, day_key]) == [3, 3]
    assert registry.get_sample_value("gateway_lease_units_returned_total") == 7
    assert leases.held == 0
    assert (await leases.consume("42", [charge], failure_mode=None)).admitted
    assert await used(store, charge) == 10  # a fresh lease in the new window


async def test_past_the_allowance_requests_are_decided_with_packages(
    store: Store, clock: FakeClock
) -> None:
    leases = process(store, clock)
    charge = calls(limit=5, lease=4, package=3)
    results = [await leases.consume("42", [charge], failure_mode=None) for _ in range(9)]
    assert [d.admitted for d in results] == [True] * 8 + [False]
    (state,) = await store.peek("42", [charge])
    # the last 3 units were paid from the package, decided per request by the store
    assert (state.used, state.from_package) == (8, 3)


async def test_a_grant_short_of_the_cost_leases_nothing(store: Store, clock: FakeClock) -> None:
    (granted,) = await store.lease("42", [Lease(calls(limit=3, lease=10, cost=4))])
    assert granted.units == 0 and await used(store, calls()) == 0
    (granted,) = await store.lease("42", [Lease(calls(limit=3, lease=10, cost=2))])
    assert (granted.units, granted.used) == (3, 3)


async def test_a_new_policy_gives_every_lease_back(store: Store, clock: FakeClock) -> None:
    leases = process(store, clock)

    def leased(units: int) -> Charge:
        return Charge("api_calls", "42", "month", 1, 100, history_ttl=8 * 86400, lease=units)

    day_key = history_key("42", "api_calls", "42", window("day", clock.now())[0])
    assert (await leases.consume("42", [leased(10)], failure_mode=None)).admitted
    # a changed lease size or limit is taken anew, the old units given back in the same
    # call, from the window's count and the day's history alike
    assert (await leases.consume("42", [leased(5)], failure_mode=None)).admitted
    assert await used(store, calls()) == 1 + 5
    assert await store.read("42", [day_key]) == [1 + 5]
    await leases.close()
    assert await used(store, calls()) == 2
    assert await store.read("42", [day_key]) == [2]


async def test_a_spent_allowance_is_decided_per_request_until_the_window_rolls(
    store: Store, clock: FakeClock
) -> None:
    counting = Counting(store)
    leases = process(counting, clock)  # type: ignore[arg-type]
    results = [
        await leases.consume("42", [calls(limit=3, lease=2)], failure_mode=None) for _ in range(6)
    ]
    assert [d.admitted for d in results] == [True] * 3 + [False] * 3
    # two leases, one that found nothing left, then one store decision per refusal
    assert counting.calls == ["lease", "lease", "lease", "consume", "consume", "consume"]
    clock.advance(6 * 86400)
    assert (await leases.consume("42", [calls(limit=3, lease=2)], failure_mode=None)).admitted
    assert counting.calls[-1] == "lease"


class Gated(Counting):
    """Holds every lease call until ``opened`` is set."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.opened = asyncio.Event()

    async def lease(self, account_id: str, items: Sequence[Lease]) -> tuple[Granted, ...]:
        await self.opened.wait()
        return await self.inner.lease(account_id, items)


async def test_units_being_given_back_are_never_admitted(store: Store, clock: FakeClock) -> None:
    gated = Gated(store)
    gated.opened.set()
    leases = process(gated, clock)  # type: ignore[arg-type]
    a = calls(lease=10)
    b = Charge("logic_engine_calls", "42", "month", 1, 100, lease=10)
    assert (await leases.consume("42", [a], failure_mode=None)).admitted
    gated.opened.clear()
    # a refill for both counters gives back the 9 units of `a` while a call for `a` alone
    # arrives: it must wait for the refill, not admit from units already on their way back
    both = asyncio.ensure_future(leases.consume("42", [a, b], failure_mode=None))
    await asyncio.sleep(0)
    alone = asyncio.ensure_future(leases.consume("42", [a], failure_mode=None))
    await asyncio.sleep(0)
    gated.opened.set()
    assert (await both).admitted and (await alone).admitted
    await leases.close()
    assert await used(store, a) == 3


async def test_leased_keys_expire_like_decided_ones(redis_url: str, clock: FakeClock) -> None:
    store = RedisStore(redis_url, clock=clock)
    try:
        charge = Charge("api_calls", "42", "month", 1, 100, history_ttl=8 * 86400, lease=10)
        (granted,) = await store.lease("42", [Lease(charge)])
        client = Redis.from_url(redis_url)
        try:
            ttls = [await client.ttl(granted.key), await client.ttl(granted.history)]
        finally:
            await client.aclose()
    finally:
        await store.close()
    # Redis counts down in real time while the test runs
    assert window_ttl("month") - 60 <= ttls[0] <= window_ttl("month")
    assert 8 * 86400 - 60 <= ttls[1] <= 8 * 86400


async def test_a_reloaded_policy_gives_every_lease_back(store: Store, clock: FakeClock) -> None:
    holder = PolicyHolder(parse_policy(ops_policy()))
    guarded = GuardedStore(store, mode="closed", allowance=0, clock=clock)
    leases = Leases(guarded, clock, policy=holder)
    assert (await leases.consume("42", [calls(lease=10)], failure_mode=None)).admitted
    sweeping = asyncio.ensure_future(leases.run(0.0))
    try:
        await asyncio.sleep(0.05)
        assert leases.held == 9  # the same policy, a window not rolled: kept
        holder.swap(parse_policy(ops_policy(free_calls=4)))
        async with asyncio.timeout(10):
            while await used(store, calls()) != 1:
                await asyncio.sleep(0.01)
    finally:
        await cancel_and_wait(sweeping)
    assert leases.held == 0
