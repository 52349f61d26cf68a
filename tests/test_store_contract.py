"""The Store contract, run against every store: memory, one redis-server, a Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.errors import StoreUnavailable
from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge, Store
from gateway.metering.windows import STATEMENT_RETENTION, window
from tests.conftest import utc
from tests.redis_servers import RedisCluster, RedisServer

STORES = ["memory", "redis", "cluster"]
Make = Callable[[], Store]


@pytest.fixture(params=STORES)
async def make_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Make]:
    """A factory of stores sharing one backend (several clients, as several workers have)."""
    made: list[Store] = []
    if request.param == "memory":
        shared = MemoryStore(clock)

        def make() -> Store:
            return shared

    else:
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")

        def make() -> Store:
            store = RedisStore(url, clock=clock, timeout_ms=2000)
            made.append(store)
            return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def store(make_store: Make) -> Store:
    return make_store()


def calls(limit: int | None, cost: int = 1, period: str | None = "month") -> Charge:
    return Charge("api_calls", "42", period, cost, limit)  # type: ignore[arg-type]


def triggers(limit: int | None, cost: int = 1) -> Charge:
    return Charge("triggers", "42", None, cost, limit)


async def test_admits_up_to_the_limit_then_refuses(store: Store) -> None:
    for used in range(1, 4):
        decision = await store.consume("42", [calls(3)])
        assert decision.admitted
        assert decision.states[0].used == used
    decision = await store.consume("42", [calls(3)])
    assert not decision.admitted
    assert decision.refused == 0
    assert decision.states[0].used == 3
    assert decision.states[0].remaining == 0


async def test_all_or_nothing_across_charges(store: Store) -> None:
    assert (await store.consume("42", [calls(10), triggers(1)])).admitted
    decision = await store.consume("42", [calls(10, cost=2), triggers(1)])
    assert not decision.admitted
    assert decision.refused == 1
    # the first charge fitted, yet nothing was applied
    states = await store.peek("42", [calls(10), triggers(1)])
    assert [s.used for s in states] == [1, 1]


async def test_unlimited_charges_are_still_counted(store: Store) -> None:
    for _ in range(5):
        assert (await store.consume("42", [calls(None, cost=7)])).admitted
    assert (await store.peek("42", [calls(None)]))[0].used == 35


async def test_month_and_day_windows_reset_on_the_utc_calendar(
    store: Store, clock: FakeClock
) -> None:
    clock.set(utc(2026, 2, 28, 23, 59, 59))
    month = await store.consume("42", [calls(1)])
    day = await store.consume("42", [Charge("daily", "42", "day", 1, 1)])
    assert month.states[0].reset_at == utc(2026, 3, 1)
    assert day.states[0].reset_at == utc(2026, 3, 1)
    assert month.states[0].key.endswith(":2026-02")
    assert day.states[0].key.endswith(":2026-02-28")
    assert not (await store.consume("42", [calls(1)])).admitted
    clock.advance(1)
    fresh = await store.consume("42", [calls(1)])
    assert fresh.admitted
    assert fresh.states[0].key.endswith(":2026-03")
    assert fresh.states[0].reset_at == utc(2026, 4, 1)
    clock.set(utc(2026, 12, 31, 12))
    assert (await store.peek("42", [calls(1)]))[0].reset_at == utc(2027, 1, 1)


async def test_gauges_have_no_window(store: Store, clock: FakeClock) -> None:
    assert (await store.consume("42", [triggers(2, cost=2)])).admitted
    clock.advance(400 * 86400)
    state = (await store.peek("42", [triggers(2)]))[0]
    assert (state.used, state.reset_at) == (2, None)


async def test_release_never_goes_below_zero_and_leaves_absent_keys_absent(
    store: Store,
) -> None:
    decision = await store.consume("42", [triggers(5, cost=2)])
    key = decision.states[0].key
    await store.release("42", [(key, 1)])
    assert (await store.peek("42", [triggers(5)]))[0].used == 1
    await store.release("42", [(key, 10)])
    assert (await store.peek("42", [triggers(5)]))[0].used == 0
    missing = key.replace(":triggers:", ":other:")
    await store.release("42", [(missing, 3)])
    peeked = await store.peek("42", [Charge("other", "42", None, 1, None)])
    assert peeked[0].used == 0


async def test_peek_consumes_nothing_and_set_usage_corrects(store: Store) -> None:
    await store.peek("42", [calls(3)])
    state = await store.set_usage("42", calls(3), 2)
    assert (state.used, state.remaining) == (2, 1)
    assert (await store.consume("42", [calls(3)])).admitted
    assert not (await store.consume("42", [calls(3)])).admitted


async def test_many_concurrent_consumers_for_the_last_units_admit_exactly_that_many(
    make_store: Make,
) -> None:
    stores = [make_store() for _ in range(4)]
    await stores[0].set_usage("42", calls(500), 450)

    async def take(store: Store) -> bool:
        return (await store.consume("42", [calls(500), triggers(None)])).admitted

    results = await asyncio.gather(*(take(stores[i % 4]) for i in range(200)))
    assert sum(results) == 50
    used = await stores[0].peek("42", [calls(500), triggers(None)])
    assert [s.used for s in used] == [500, 50]


async def test_records_round_trip_and_only_if_absent_refuses_to_overwrite(store: Store) -> None:
    assert await store.get_record("account", "1") is None
    assert await store.put_record("account", "1", {"tier": "free", "n": [1, 2]})
    assert not await store.put_record("account", "1", {"tier": "pro"}, only_if_absent=True)
    found = await store.get_record("account", "1")
    assert found == {"tier": "free", "n": [1, 2]}
    found["tier"] = "changed"
    assert (await store.get_record("account", "1")) == {"tier": "free", "n": [1, 2]}
    assert await store.delete_record("account", "1")
    assert not await store.delete_record("account", "1")


async def test_sets_are_sorted_and_ignore_absent_members(store: Store) -> None:
    for member in ("b", "a", "c", "a"):
        await store.add_member("keys", "7", member)
    await store.remove_member("keys", "7", "c")
    await store.remove_member("keys", "7", "zz")
    assert await store.members("keys", "7") == ["a", "b"]
    assert await store.members("keys", "8") == []


async def test_next_id_is_unique_across_clients(make_store: Make) -> None:
    stores = [make_store() for _ in range(3)]
    ids = await asyncio.gather(*(stores[i % 3].next_id("account") for i in range(60)))
    assert sorted(ids) == list(range(1, 61))


async def test_published_messages_reach_listeners(make_store: Make) -> None:
    sender, receiver = make_store(), make_store()
    stream = receiver.listen("gw:test")
    try:
        async with asyncio.timeout(5):
            assert await anext(stream) == ""  # subscribed
            await sender.publish("gw:test", "key:abc")
            assert await anext(stream) == "key:abc"
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_swap_record_writes_only_over_the_version_read(make_store: Make) -> None:
    first, second = make_store(), make_store()
    assert await first.fetch_record("account", "7") == (None, None)
    # "only if absent": one of two creators wins
    assert await first.swap_record("account", "7", None, {"tier": "free"})
    assert not await second.swap_record("account", "7", None, {"tier": "pro"})
    doc, version = await second.fetch_record("account", "7")
    assert doc == {"tier": "free"}
    assert await first.swap_record("account", "7", version, {"tier": "pro"})
    # the version second read is stale now: its write is refused and changes nothing
    assert not await second.swap_record("account", "7", version, {"tier": "enterprise"})
    assert await second.get_record("account", "7") == {"tier": "pro"}
    doc, version = await second.fetch_record("account", "7")
    assert await second.swap_record("account", "7", version, None)  # a delete
    assert await first.get_record("account", "7") is None


# -- Redis only --------------------------------------------------------------------------


async def test_every_window_key_expires_and_gauges_do_not(
    redis_server: RedisServer, redis_url: str, clock: FakeClock
) -> None:
    store = RedisStore(redis_url, clock=clock)
    try:
        await store.consume("42", [calls(None), Charge("daily", "42", "day", 1, None)])
        await store.set_usage("42", calls(None, period="day"), 3)
        await store.consume("42", [triggers(None)])
    finally:
        await store.close()
    client = redis_server.client()
    ttls = {k.decode(): client.ttl(k) for k in client.keys("gw:*")}
    gauge = "gw:{a:42}:m:triggers:42"
    assert ttls.pop(gauge) == -1
    # each admitted decision leaves a short-lived marker for void.lua (late.py)
    markers = {k: ttl for k, ttl in ttls.items() if k.startswith("gw:{a:42}:d:")}
    assert len(markers) == 2 and all(0 < ttl <= 60 for ttl in markers.values()), markers
    ttls = {k: ttl for k, ttl in ttls.items() if k not in markers}
    assert len(ttls) == 3
    # a day's window for its length plus a day; a month's as long as statements are served
    month = ttls.pop("gw:{a:42}:m:api_calls:42:2026-11")
    assert STATEMENT_RETENTION - 60 < month <= STATEMENT_RETENTION
    assert all(0 < ttl <= 2 * 86400 for ttl in ttls.values()), ttls


async def test_without_a_clock_windows_come_from_redis_server_time(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        state = (await store.consume("42", [calls(None)])).states[0]
    finally:
        await store.close()
    period_id, reset_at = window("month", time.time())
    assert state.key == f"gw:{{a:42}}:m:api_calls:42:{period_id}"
    assert state.reset_at == reset_at


async def test_lua_windows_agree_with_python_on_calendar_edges(
    redis_url: str, clock: FakeClock
) -> None:
    """Month and year ends, leap days (2000, 2024, not 2100), before and after the epoch."""
    store = RedisStore(redis_url, clock=clock)
    charges = [calls(None), Charge("daily", "42", "day", 1, None)]
    instants = []
    for year in (1970, 1999, 2000, 2024, 2026, 2038, 2100, 2400):
        for month in range(1, 13):
            start = utc(year, month, 1)
            instants += [start - 1, start, start + 0.5, start + 28 * 86400 + 86399.75]
    try:
        for now in instants:
            clock.set(now)
            states = await store.peek("42", charges)
            for state, period in zip(states, ("month", "day"), strict=True):
                period_id, reset_at = window(period, now)  # type: ignore[arg-type]
                assert state.key.endswith(":" + period_id), (now, state.key)
                assert state.reset_at == reset_at, (now, period)
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_scripts_flushed_behind_the_stores_back_are_reloaded(
    backend: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        nodes = [request.getfixturevalue("redis_server")]
    else:
        url = request.getfixturevalue("cluster_url")
        nodes = request.getfixturevalue("redis_cluster").nodes
    store = RedisStore(url, clock=clock)
    accounts = [str(n) for n in range(6)]  # spread over every primary of the cluster
    try:
        for account in accounts:
            assert (await store.consume(account, [calls(2)])).admitted
        for node in nodes:
            node.client().script_flush()  # what a restart or a failover does
        for account in accounts:
            assert (await store.consume(account, [calls(2)])).admitted
            assert not (await store.consume(account, [calls(2)])).admitted
    finally:
        await store.close()


async def test_cluster_keeps_an_accounts_meters_in_one_slot(
    redis_cluster: RedisCluster, cluster_url: str, clock: FakeClock
) -> None:
    store = RedisStore(cluster_url, clock=clock)
    try:
        for account in ("1", "2", "3", "4", "5", "6"):
            charges = [calls(5), triggers(5), Charge("daily", account, "day", 1, 9)]
            assert (await store.consume(account, charges)).admitted
    finally:
        await store.close()
    holders = [n for n in redis_cluster.nodes if n.client().dbsize() > 0]
    # six accounts spread over the primaries, each account's keys on exactly one of them
    assert len(holders) >= 2
    for node in holders:
        keys = [k.decode() for k in node.client().keys("gw:*")]
        tags = {k.split("}")[0] for k in keys}
        meters = [k for k in keys if ":d:" not in k]
        assert all(sum(1 for k in meters if k.startswith(t)) == 3 for t in tags)
        # a decision's marker (late.py) lives in its account's slot too
        assert all(any(k.startswith(t + "}:d:") for k in keys) for t in tags)


async def test_a_decision_cut_off_by_a_frozen_server_never_counts(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    store = RedisStore(own_redis.url, clock=clock, timeout_ms=200)
    try:
        assert (await store.consume("42", [calls(None)])).admitted
        own_redis.freeze()
        try:
            with pytest.raises(StoreUnavailable):
                await store.consume("42", [calls(None, cost=5)])
        finally:
            own_redis.thaw()  # Redis now reads the decision the gateway gave up on
        await store.settle()
        assert (await store.peek("42", [calls(None)]))[0].used == 1
    finally:
        await store.close()


async def test_void_gives_back_a_decision_whose_answer_was_lost(
    redis_url: str, clock: FakeClock
) -> None:
    """A decision that ran but whose answer never arrived (sent here by hand with its id):
    voiding it gives its units back, package and overage ledgers included, and a copy that
    arrives after the void applies nothing."""
    store = RedisStore(redis_url, clock=clock, timeout_ms=2000)
    charge = Charge("api_calls", "42", "month", 3, 2, package=0, overage=True, history_ttl=-1)
    base = "gw:{a:42}:m:api_calls:42"

    def call(guard: tuple[Any, str, int]) -> tuple[list[str], list[Any]]:
        # exactly what consume sends, with a decision id chosen here
        return store.consume_call("42", [charge], guard=guard)

    try:
        assert (await store.consume("42", [charge])).admitted  # 2 allowance, 1 overage
        raw = await store._script("consume", *call((0, "lost-1", 60000)))
        assert int(raw[0]) == 1  # it ran: 6 used, 4 of them overage
        await store._void("42", "lost-1", [charge])
        state = (await store.peek("42", [charge]))[0]
        assert (state.used, state.from_overage) == (3, 1)
        day = f"{base}:h:{window('day', clock.now())[0]}"
        assert await store.read("42", [day]) == [3]
        # a copy of the voided decision, arriving late, is refused and changes nothing
        raw = await store._script("consume", *call((0, "lost-1", 60000)))
        assert int(raw[0]) == -1
        # and so is one past its deadline in Redis time
        raw = await store._script("consume", *call((time.time() - 1, "late-2", 60000)))
        assert int(raw[0]) == -1
        assert (await store.peek("42", [charge]))[0].used == 3
    finally:
        await store.close()


async def test_a_record_with_a_ttl_goes_when_it_runs_out_and_others_stay(
    store: Store, clock: FakeClock
) -> None:
    await store.put_record("session", "short", {"n": 1}, ttl_seconds=1)
    await store.put_record("account", "kept", {"n": 2})
    assert await store.get_record("session", "short") == {"n": 1}
    # the memory store runs on the injected clock, Redis on its own: wait for both
    clock.advance(2)
    async with asyncio.timeout(10):
        while await store.get_record("session", "short") is not None:
            await asyncio.sleep(0.05)
    assert await store.get_record("account", "kept") == {"n": 2}
    # a gone record is absent for only_if_absent too; rewriting without a ttl keeps it
    assert await store.put_record("session", "short", {"n": 3}, only_if_absent=True)
    clock.advance(2)
    assert await store.get_record("session", "short") == {"n": 3}
