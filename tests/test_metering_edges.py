"""Metering edges the rest of the suite let change unnoticed (found by `make mutate`).

Each test names what a user would see go wrong. They run on the embedded store and on a real
redis-server; the Cluster adds nothing here (no decision spans more than one account's slot).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.errors import StoreUnavailable
from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge, Store
from gateway.metering.windows import iso, window
from tests.conftest import GatewayFactory, utc
from tests.redis_servers import RedisServer

STORES = ("memory", "redis")


@pytest.fixture
async def store(
    store_kind: str, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[Store]:
    if store_kind == "memory":
        yield MemoryStore(clock)
        return
    redis = RedisStore(request.getfixturevalue("redis_url"), clock=clock, timeout_ms=2000)
    yield redis
    await redis.close()


def live(scope_id: str, limit: int) -> Charge:
    """A live count (a gauge, no window) of one scope, e.g. a project's concurrent runs."""
    return Charge("concurrent_runs", scope_id, None, 1, limit)


async def test_live_counts_of_two_scopes_of_one_account_are_apart(store: Store) -> None:
    # a project at its live limit must not take the account's other projects down with it
    assert (await store.consume("42", [live("p1", 1)])).admitted
    assert not (await store.consume("42", [live("p1", 1)])).admitted
    assert (await store.consume("42", [live("p2", 1)])).admitted
    assert [s.used for s in await store.peek("42", [live("p1", 1), live("p2", 1)])] == [1, 1]


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time zone at UTC+14 (a POSIX TZ string: no tzdata needed)."""
    monkeypatch.setenv("TZ", "KIRI-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_windows_and_reset_times_are_utc_whatever_the_hosts_time_zone() -> None:
    # 12:00 UTC on the last day of a month is already the next month at UTC+14
    noon = utc(2031, 1, 31, 12)
    assert window("day", noon) == ("2031-01-31", utc(2031, 2, 1))
    assert window("month", noon) == ("2031-01", utc(2031, 2, 1))
    assert iso(noon) == "2031-01-31T12:00:00Z"


async def test_removing_a_member_of_a_set_never_written_is_a_no_op(store: Store) -> None:
    # e.g. revoking a key from an account whose key set was never created
    await store.remove_member("keys", "nobody", "k1")
    assert await store.members("keys", "nobody") == []


async def test_a_record_deleted_then_created_again_does_not_inherit_the_old_ttl(
    store: Store, clock: FakeClock
) -> None:
    await store.put_record("account", "7", {"n": 1}, ttl_seconds=1)
    assert await store.delete_record("account", "7")
    # created again by a compare-and-swap over "absent" (version None), with no ttl
    assert await store.swap_record("account", "7", None, {"n": 2})
    clock.advance(5)  # past the old ttl on the memory store's clock
    assert await store.get_record("account", "7") == {"n": 2}


@pytest.mark.stores("redis")
async def test_voiding_a_lost_decision_gives_its_live_count_back(store: Store) -> None:
    """A decision holding a live count (no window) whose answer was lost, sent here by hand
    with its id as consume sends it: voiding it frees the live unit, or it leaks for ever."""
    assert isinstance(store, RedisStore)
    charge = live("p1", 2)
    assert (await store.consume("42", [charge])).admitted
    raw = await store._script("consume", *store.consume_call("42", [charge], (0, "lost-1", 60000)))
    assert int(raw[0]) == 1
    assert (await store.peek("42", [charge]))[0].used == 2
    await store._void("42", "lost-1", [charge])
    assert (await store.peek("42", [charge]))[0].used == 1


async def test_a_service_cap_refused_half_a_second_before_reset_says_retry_in_1_second(
    make_gateway: GatewayFactory,
) -> None:
    """The cap's 429 (seed 001) counts what is used, says it is retryable, and never tells a
    client to wait less than a second (0 would invite a retry storm) or longer than needed."""
    gw = await make_gateway()
    account = await gw.account("starter")
    user = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    project = await gw.admin.post(
        f"/admin/accounts/{account}/projects", json={"name": "p"}, headers=gw.admin_headers
    )
    caps = {"scheduler": {"limit": 1, "period": "day"}}
    body = {"project_id": (await project.json())["id"], "caps": caps}
    created = await (await gw.client.post("/api/api-keys", json=body, headers=user)).json()
    key = {"Authorization": f"Bearer {created['key']}"}
    assert (await gw.client.post("/api/scheduler/jobs", headers=key)).status == 200
    gw.clock.set(utc(2026, 11, 25, 23, 59, 59) + 0.5)
    resp = await gw.client.post("/api/scheduler/jobs", headers=key)
    assert resp.status == 429
    refusal = await resp.json()
    assert (refusal["current"], refusal["retryable"]) == (1, True)
    assert refusal["reset"] == "2026-11-26T00:00:00Z"
    assert resp.headers["Retry-After"] == "1"


async def test_a_decision_sent_to_a_frozen_server_is_voided_in_the_background(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    """A fresh gateway knows no Redis-time offset yet, so only the void protects its first
    decision (late.py): given up on while the server is frozen, it is voided by the
    background loop, which keeps retrying through the outage, with no settle() called."""
    store = RedisStore(own_redis.url, clock=clock, timeout_ms=200)
    charge = Charge("api_calls", "42", "month", 1, None)
    client = own_redis.client()
    try:
        own_redis.freeze()
        try:
            with pytest.raises(StoreUnavailable):
                await store.consume("42", [charge])
            await asyncio.sleep(1)  # the loop's first voids fail against the frozen server
        finally:
            own_redis.thaw()  # Redis now reads the decision the gateway gave up on
        async with asyncio.timeout(10):
            while True:
                markers = [client.get(k) for k in client.keys("gw:{a:42}:d:*")]
                if markers and all(m == b"void" for m in markers):
                    break
                await asyncio.sleep(0.05)
        assert (await store.peek("42", [charge]))[0].used == 0
    finally:
        await store.close()


async def test_voids_owed_are_retried_through_an_outage_until_redis_is_back(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    """With the server down, each void fails at once; the loop backs off and tries again
    until a restarted server takes it (and leaves its tombstone)."""
    store = RedisStore(own_redis.url, clock=clock, timeout_ms=200)
    charge = Charge("api_calls", "42", "month", 1, None)
    try:
        assert (await store.consume("42", [charge])).admitted
        own_redis.kill()
        with pytest.raises(StoreUnavailable):
            await store.consume("42", [charge])
        await asyncio.sleep(1)  # several voids fail meanwhile, backing off
        own_redis.start()
        client = own_redis.client()
        async with asyncio.timeout(10):
            while not any(client.get(k) == b"void" for k in client.keys("gw:{a:42}:d:*")):
                await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_a_feature_refusal_names_the_feature_and_the_cheapest_tier_that_has_it(
    make_gateway: GatewayFactory,
) -> None:
    """The policy's feature_unavailable answer is filled in: the feature's title, the tier,
    and the cheapest tier above that has the feature (here service caps, asked on Free)."""
    gw = await make_gateway()
    account = await gw.account("free")
    user = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    project = await gw.admin.post(
        f"/admin/accounts/{account}/projects", json={"name": "p"}, headers=gw.admin_headers
    )
    body = {"project_id": (await project.json())["id"], "caps": {"payments": "deny"}}
    resp = await gw.client.post("/api/api-keys", json=body, headers=user)
    assert resp.status == 402
    refusal = await resp.json()
    assert refusal["reason"] == (
        "Service caps on project API keys is not available on the FREE tier."
    )
    assert (refusal["feature"], refusal["upgrade_tier"]) == ("service_caps", "starter")
