"""Each way a reload travels, with the other ways off: pub/sub alone, the file watch alone,
and every policy validator refusing its bad candidate through the reload path.

Several gateways built by one test share one store backend, as the workers and replicas of a
deployment share one Redis: one MemoryStore, or a redis-server of the test's own (which the
store-down test freezes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from gateway.policy.reload import RELOAD_CHANNEL
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy
from tests.redis_servers import RedisServer
from tests.test_policy_check import BAD, EXPECTED, GOOD

STORES = ("memory", "redis")


@pytest.fixture
def store_factory(
    store_kind: str, request: pytest.FixtureRequest
) -> Callable[[FakeClock], Awaitable[Store]]:
    server: RedisServer | None = (
        request.getfixturevalue("own_redis") if store_kind == "redis" else None
    )
    shared: list[Store] = []

    async def make(clock: FakeClock) -> Store:
        if server is not None:
            return RedisStore(server.url, clock=clock, timeout_ms=500)
        if not shared:
            shared.append(MemoryStore(clock))
        return shared[0]

    return make


def limit(gw: Harness) -> int | None:
    return gw.gateway.policy.current.tiers["free"].limits["calls"]


async def test_a_reload_reaches_every_gateway_through_the_store_alone(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """The file watch is off everywhere: only the store's notification can tell the others."""
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    name = str(path.with_suffix(""))
    asked, *others = [await make_gateway(name, policy_watch_seconds=0) for _ in range(3)]
    write_policy(path, ops_policy(free_calls=7))
    async with asyncio.timeout(20):
        # a gateway hears only what is published once it has subscribed: ask until all did
        while any(limit(gw) != 7 for gw in others):
            resp = await asyncio.wait_for(
                asked.admin.post("/admin/policy/reload", headers=asked.admin_headers), 10
            )
            assert resp.status == 200, await resp.text()
            digest = (await resp.json())["digest"]
            for _ in range(20):
                if all(limit(gw) == 7 for gw in others):
                    break
                await asyncio.sleep(0.025)
    assert limit(asked) == 7
    assert {gw.gateway.policy.current.digest for gw in others} == {digest}
    for gw in others:
        sample = gw.gateway.metrics.registry.get_sample_value(
            "gateway_policy_reloads_total", {"result": "success"}
        )
        assert sample is not None and sample >= 1


async def test_an_unchanged_digest_on_the_channel_reloads_nothing(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)
    publisher = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)
    # the file changed, but the notification names the digest this gateway already serves
    write_policy(path, ops_policy(free_calls=9))
    current = gw.gateway.policy.current.digest
    for _ in range(5):
        await publisher.gateway.store.publish(RELOAD_CHANNEL, current)
        await asyncio.sleep(0.05)
    assert limit(gw) == 3


@pytest.mark.stores("redis")
async def test_the_file_watch_alone_reloads_while_the_store_is_down(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0.05)
    headers = await gw.caller("free", "k_")
    own_redis.freeze()  # decisions time out; the idle notification channel notices nothing
    try:
        resp = await gw.client.get("/api/things", headers=headers)
        assert resp.status == 503, await resp.text()
        caplog.set_level(logging.INFO, logger="gateway")
        write_policy(path, ops_policy(free_calls=1))
        async with asyncio.timeout(20):
            while limit(gw) != 1:
                await asyncio.sleep(0.02)
    finally:
        own_redis.thaw()
    reloads = [r.getMessage() for r in caplog.records if "policy reloaded" in r.getMessage()]
    assert reloads and all("(file changed)" in message for message in reloads), reloads


@pytest.mark.stores("memory")
@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_every_bad_candidate_is_refused_by_the_reload_and_the_last_good_policy_stays(
    make_gateway: GatewayFactory, tmp_path: Path, name: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)
    digest = gw.gateway.policy.current.digest
    path.write_bytes((BAD / f"{name}.yaml").read_bytes())
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    assert body["code"] == "POLICY_INVALID"
    line, key_path, problem = EXPECTED[name]
    assert f"policy.yaml:{line}" in body["message"]
    assert key_path in body["message"] and problem in body["message"]
    assert gw.gateway.policy.current.digest == digest


# the gateway's own checks on top of the loader's: (what the candidate changes, words refused)
GATEWAY_CHECKS = {
    "tenant claim": (
        GOOD.replace("meters:", "identity:\n  tenant_claim: tenant\nmeters:", 1),
        "identity.tenant_claim changed from 'organization_id' to 'tenant'",
    ),
    "unknown handler": (
        GOOD + "  - name: mystery\n    path: /mystery\n    answer: no-such-handler\n",
        "answers with 'no-such-handler'",
    ),
}


@pytest.mark.stores("memory")
@pytest.mark.parametrize("case", sorted(GATEWAY_CHECKS))
async def test_the_gateways_own_checks_refuse_a_candidate_through_the_reload(
    make_gateway: GatewayFactory, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)
    digest = gw.gateway.policy.current.digest
    text, words = GATEWAY_CHECKS[case]
    path.write_text(text)
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 422, await resp.text()
    assert words in (await resp.json())["message"]
    assert gw.gateway.policy.current.digest == digest
