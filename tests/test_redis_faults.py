"""Redis frozen, killed and restarted empty under load: fail closed, fail open, recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.keys import meter_key
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from gateway.policy.loader import load_policy
from gateway.policy.source import ConfigError
from tests.conftest import POLICIES, GatewayFactory, Harness
from tests.redis_servers import RedisServer

BUDGET_MS = 200
# A request left waiting on a frozen or dead store would never be answered while the store stays
# down: every request below is sent under this bound (a bounded wait, not a timing assertion)
ANSWER_BOUND = 30.0


@pytest.fixture
def store_factory(own_redis: RedisServer) -> Callable[[FakeClock], Awaitable[Store]]:
    async def make(clock: FakeClock) -> Store:
        return RedisStore(own_redis.url, clock=clock, timeout_ms=BUDGET_MS)

    return make


async def send(gw: Harness, path: str, headers: dict[str, str]) -> Any:
    """The answer to one request, which must come while the store is still down."""
    async with asyncio.timeout(ANSWER_BOUND):
        resp = await gw.client.post(path, headers=headers)
        await resp.read()
    return resp


async def ready(gw: Harness) -> bool:
    return (await gw.admin.get("/readyz")).status == 200


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


async def test_redis_frozen_mid_load_fails_closed_within_the_budget_then_recovers(
    make_gateway: GatewayFactory, own_redis: RedisServer
) -> None:
    # load at one instant: the budget's test, not the request rate's
    gw = await make_gateway(identity_cache_ttl_seconds=300.0, rates=False)
    headers = await gw.caller("anonymous")
    outcomes: list[tuple[int, bool]] = []  # status, degraded-marked
    stop = asyncio.Event()

    async def client(n: int) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            resp = await send(gw, f"/api/logic/run/{n}-{i}", headers)
            outcomes.append((resp.status, "X-Gateway-Degraded" in resp.headers))
            if resp.status == 503:
                assert (await resp.json())["code"] == "STORE_UNAVAILABLE"
                assert int(resp.headers["Retry-After"]) >= 1

    def count(status: int) -> int:
        return sum(1 for s, _ in outcomes if s == status)

    async def until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not check():
                await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    try:
        await until(lambda: count(200) >= 40)
        own_redis.freeze()
        try:
            await until(lambda: count(503) >= 40)
            resp = await gw.admin.get("/readyz")
            assert resp.status == 503
            metrics = await (await gw.admin.get("/metrics")).text()
            assert "gateway_store_degraded 1.0" in metrics
            assert 'gateway_store_degraded_decisions_total{outcome="refused_closed"}' in metrics
        finally:
            own_redis.thaw()
        admitted_before = count(200)
        await until(lambda: count(200) >= admitted_before + 40)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    statuses = {s for s, _ in outcomes}
    refused = [(s, marked) for s, marked in outcomes if s == 503]
    print(
        f"\nfail-closed, Redis frozen mid-load: {count(200)} admitted, {count(503)} refused "
        f"with 503 (budget {BUDGET_MS} ms)"
    )
    assert statuses == {200, 503}
    assert all(marked for _, marked in refused)
    assert gw.upstream.count("/api/logic/") == count(200)
    assert "gateway_store_degraded 0.0" in await (await gw.admin.get("/metrics")).text()
    # every admitted call was counted; a call cut off by the budget may have been counted too
    resp = await gw.client.post("/api/logic/run/after", headers=headers)
    used = 1000 - int(resp.headers["RateLimit-Remaining"]) - 1
    assert count(200) <= used <= count(200) + 8


async def test_redis_killed_and_restarted_empty_reloads_its_scripts(
    make_gateway: GatewayFactory, own_redis: RedisServer
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("anonymous")
    assert (await gw.client.post("/api/logic/run/warm", headers=headers)).status == 200

    own_redis.kill()
    for i in range(10):
        resp = await send(gw, f"/api/logic/run/{i}", headers)
        assert resp.status == 503
    own_redis.start()  # empty: no records, no counters, no scripts
    assert own_redis.client().script_exists("0" * 40) == [False]
    await eventually(lambda: ready(gw))

    # the store still holds the scripts' SHAs: its EVALSHA meets NOSCRIPT and loads again
    headers = await gw.caller("anonymous")
    resp = await gw.client.post("/api/logic/run/fresh", headers=headers)
    assert resp.status == 200
    assert resp.headers["RateLimit-Remaining"] == "999"


async def test_fail_open_serves_a_bounded_allowance_and_reconciles_the_count(
    make_gateway: GatewayFactory, own_redis: RedisServer
) -> None:
    gw = await make_gateway(
        store_failure_mode="open", store_fail_open_allowance=30, identity_cache_ttl_seconds=300.0
    )
    headers = await gw.caller("anonymous")
    assert (await gw.client.post("/api/logic/run/warm", headers=headers)).status == 200

    own_redis.freeze()
    try:
        # the health check notices first, so no request is left half-applied in Redis
        assert (await gw.admin.get("/readyz")).status == 503
        results = await asyncio.gather(
            *(send(gw, f"/api/logic/run/{i}", headers) for i in range(40))
        )
        statuses = sorted(resp.status for resp in results)
        assert statuses == [200] * 30 + [429] * 10
        assert all(r.headers["X-Gateway-Degraded"] == "fail-open" for r in results)
        assert gw.upstream.count("/api/logic/") == 31
    finally:
        own_redis.thaw()

    await eventually(lambda: ready(gw))
    # the 30 calls admitted locally were written back: 1 + 30 + this one of 1,000
    resp = await gw.client.post("/api/logic/run/after", headers=headers)
    assert resp.status == 200
    assert resp.headers["RateLimit-Remaining"] == str(1000 - 32)
    print("\nfail-open: 30 admitted on the local allowance, reconciled to 32 used after recovery")


async def test_redis_out_of_memory_fails_closed_and_recovers(
    make_gateway: GatewayFactory, own_redis: RedisServer
) -> None:
    gw = await make_gateway(identity_cache_ttl_seconds=300.0)
    headers = await gw.caller("anonymous")
    assert (await gw.client.post("/api/logic/run/warm", headers=headers)).status == 200
    admin = own_redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        resp = await gw.client.post("/api/logic/run/oom", headers=headers)
        assert resp.status == 503
        assert (await resp.json())["code"] == "STORE_UNAVAILABLE"
        assert gw.upstream.count("/api/logic/") == 1
    finally:
        admin.config_set("maxmemory", "0")

    async def admitted() -> bool:
        return (await gw.client.post("/api/logic/run/again", headers=headers)).status == 200

    await eventually(admitted)
    assert gw.upstream.count("/api/logic/") == 2


async def test_redis_killed_mid_load_fail_open_keeps_serving_and_reconciles(
    make_gateway: GatewayFactory, own_redis: RedisServer
) -> None:
    gw = await make_gateway(
        store_failure_mode="open",
        store_fail_open_allowance=900,
        identity_cache_ttl_seconds=300.0,
        rates=False,  # load at one instant: the fail-open ledger's test, not the rate's
    )
    account = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account)}"}
    outcomes: list[tuple[int, bool]] = []  # status, degraded-marked
    stop = asyncio.Event()

    async def client(n: int) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            resp = await send(gw, f"/api/logic/run/{n}-{i}", headers)
            outcomes.append((resp.status, "X-Gateway-Degraded" in resp.headers))

    def degraded_admitted() -> int:
        return sum(1 for status, marked in outcomes if status == 200 and marked)

    async def until(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not check():
                await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    try:
        await until(lambda: len(outcomes) >= 40)
        own_redis.kill()
        await until(lambda: degraded_admitted() >= 60)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert {status for status, _ in outcomes} == {200}
    assert gw.upstream.count("/api/logic/") == len(outcomes)

    own_redis.start()  # empty, no scripts: the write-back meets NOSCRIPT and reloads
    await eventually(lambda: ready(gw))
    key = meter_key(account, "logic_engine_calls", account, "2026-11")
    written_back = int(own_redis.client().get(key) or 0)
    print(
        f"\nfail-open, Redis killed mid-load: {len(outcomes)} admitted, "
        f"{degraded_admitted()} on the local allowance, {written_back} written back after restart"
    )
    assert written_back == degraded_admitted()


def policy_with_enterprise_mode(tmp_path: Path, mode: str) -> Path:
    """agentstack.yaml with ``store_failure_mode`` set on its enterprise tier."""
    text = (POLICIES / "agentstack.yaml").read_text()
    assert "\n  enterprise:\n" in text
    text = text.replace(
        "\n  enterprise:\n", f"\n  enterprise:\n    store_failure_mode: {mode}\n", 1
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


async def test_a_tier_can_fail_open_while_the_gateway_fails_closed(
    make_gateway: GatewayFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    policy = policy_with_enterprise_mode(tmp_path, "open")
    gw = await make_gateway(str(policy.with_suffix("")), identity_cache_ttl_seconds=300.0)
    anonymous = await gw.caller("anonymous")
    enterprise = await gw.caller("enterprise", "ask_")
    for headers in (anonymous, enterprise):
        assert (await gw.client.get("/api/logic/warm", headers=headers)).status == 200

    own_redis.freeze()
    try:
        assert (await gw.admin.get("/readyz")).status == 503
        resp = await gw.client.get("/api/logic/x", headers=anonymous)
        assert resp.status == 503
        resp = await gw.client.get("/api/logic/x", headers=enterprise)
        assert resp.status == 200
        assert resp.headers["X-Gateway-Degraded"] == "fail-open"
    finally:
        own_redis.thaw()


def test_a_tiers_failure_mode_is_checked_with_its_place(tmp_path: Path) -> None:
    policy = policy_with_enterprise_mode(tmp_path, "sometimes")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    message = str(caught.value)
    assert "tiers.enterprise.store_failure_mode" in message
    assert "policy.yaml:" in message
