"""Redis-only behaviour end to end: one command per warm request, cross-process invalidation.

The AgentStack and lifecycle flows themselves run on Redis through their modules' STORES."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.keys import INVALIDATION_CHANNEL
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from tests.conftest import GatewayFactory
from tests.redis_servers import RedisServer


@pytest.fixture
def store_factory(redis_url: str) -> Callable[[FakeClock], Awaitable[Store]]:
    async def make(clock: FakeClock) -> Store:
        return RedisStore(redis_url, clock=clock, timeout_ms=2000)

    return make


async def test_a_warm_proxied_request_costs_one_redis_command(
    make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    # no idle store probe: its PING is no request's command
    gw = await make_gateway(identity_cache_ttl_seconds=300.0, store_probe_seconds=0)
    # the pro tier: its request rate (bursts of 200) is one more charge in the same EVALSHA
    headers = await gw.caller("pro", "user_ask_")
    assert (await gw.client.get("/api/logic/warm", headers=headers)).status == 200
    with redis_server.monitor() as commands:
        for i in range(40):
            resp = await gw.client.post(f"/api/logic/run/{i}", headers=headers)
            assert resp.status == 200
    assert commands == ["EVALSHA"] * 40
    assert gw.upstream.count("/api/logic/run/") == 40


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> bool:
    """Poll ``check`` until true, for at most ``seconds`` (for cross-process messages)."""
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.02)
    return True


async def test_a_revoked_key_and_a_new_tier_reach_every_process(
    make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    # two gateway processes' worth of state on one Redis; caches would hold entries 300 s
    first = await make_gateway(identity_cache_ttl_seconds=300.0)
    second = await make_gateway(identity_cache_ttl_seconds=300.0)

    async def both_listening() -> bool:
        found = redis_server.client().pubsub_numsub(INVALIDATION_CHANNEL)
        return bool(found) and int(found[0][1]) >= 2

    assert await eventually(both_listening)
    account = await first.account("anonymous")
    resp = await first.admin.post(
        f"/admin/accounts/{account}/keys",
        json={"prefix": "anon_ask_"},
        headers=first.admin_headers,
    )
    created = await resp.json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    resp = await second.client.get("/api/logic/x", headers=headers)
    assert resp.headers["RateLimit-Limit"] == "1000"

    resp = await first.admin.put(
        f"/admin/accounts/{account}/tier", json={"tier": "free"}, headers=first.admin_headers
    )
    assert resp.status == 200

    async def second_sees_free() -> bool:
        resp = await second.client.get("/api/logic/x", headers=headers)
        return resp.headers.get("RateLimit-Limit") == "10000"

    assert await eventually(second_sees_free)

    resp = await first.admin.delete(f"/admin/keys/{created['id']}", headers=first.admin_headers)
    assert resp.status == 200

    async def second_refuses() -> bool:
        return (await second.client.get("/api/logic/x", headers=headers)).status == 401

    assert await eventually(second_refuses)
