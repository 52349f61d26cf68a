"""An idle process notices its store is down: the background probe, not a request, finds out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy
from tests.redis_servers import RedisServer


@pytest.fixture
def store_factory(own_redis: RedisServer) -> Callable[[FakeClock], Awaitable[Store]]:
    """A Redis of this test's own, which it kills (the probe is what is tested, and only a
    store that can fail can show it; the memory store never does)."""

    async def make(clock: FakeClock) -> Store:
        return RedisStore(own_redis.url, clock=clock, timeout_ms=200)

    return make


def _sample(gw: Harness, name: str, **labels: str) -> float:
    return gw.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def _gateway(make_gateway: GatewayFactory, tmp_path: Path, probe: float) -> Harness:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    return await make_gateway(
        str(path.with_suffix("")), policy_watch_seconds=0, store_probe_seconds=probe
    )


async def test_an_idle_process_notices_the_store_is_down_and_counts_the_error(
    make_gateway: GatewayFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path, probe=0.05)
    assert _sample(gw, "gateway_store_degraded") == 0
    own_redis.kill()
    # no request is sent: only the probe can find out
    async with asyncio.timeout(20):
        while _sample(gw, "gateway_store_degraded") != 1:
            await asyncio.sleep(0.02)
    errors = _sample(gw, "gateway_store_errors_total", kind="error")
    errors += _sample(gw, "gateway_store_errors_total", kind="timeout")
    # once: while degraded, the backoff probe takes over and the interval probe waits
    assert errors == 1
    assert (await gw.admin.get("/readyz")).status == 503
    own_redis.start()
    async with asyncio.timeout(20):
        while _sample(gw, "gateway_store_degraded") != 0:
            await asyncio.sleep(0.02)
    assert (await gw.admin.get("/readyz")).status == 200


async def test_without_the_probe_an_idle_process_does_not_know(
    make_gateway: GatewayFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path, probe=0)
    headers = await gw.caller("free", "k_")
    own_redis.kill()
    await asyncio.sleep(0.5)  # ten intervals of the probe in the test above
    assert _sample(gw, "gateway_store_degraded") == 0
    # a request finds out, and counts the failed command
    resp = await gw.client.get("/api/things", headers=headers)
    assert resp.status == 503
    assert _sample(gw, "gateway_store_degraded") == 1
    errors = _sample(gw, "gateway_store_errors_total", kind="error")
    errors += _sample(gw, "gateway_store_errors_total", kind="timeout")
    assert errors == 1
