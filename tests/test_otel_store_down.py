"""A store that is down marks the decision's span and the request's span as errors.

Redis only, on a server of the test's own that it kills: the memory store cannot fail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from gateway.settings import TracingSettings
from tests.conftest import GatewayFactory
from tests.ops_policy import ops_policy, write_policy
from tests.otlp_collector import CLIENT, ERROR, INTERNAL, SERVER, Collector, only
from tests.redis_servers import RedisServer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def store_factory(own_redis: RedisServer) -> Callable[[FakeClock], Awaitable[Store]]:
    async def make(clock: FakeClock) -> Store:
        return RedisStore(own_redis.url, clock=clock, timeout_ms=200)

    return make


async def test_a_store_outage_is_an_error_on_the_decision_and_the_request(
    make_gateway: GatewayFactory, collector: Collector, own_redis: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(
        str(path.with_suffix("")),
        policy_watch_seconds=0,
        store_probe_seconds=0,
        tracing=TracingSettings(endpoint=collector.url, schedule_delay_seconds=0.01),
    )
    headers = await gw.caller("free", "k_")
    # the key is now in the identity cache: only the decision needs the store
    assert (await gw.client.get("/api/warm", headers=headers)).status == 200
    own_redis.kill()
    caller = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    resp = await gw.client.get("/api/x", headers={**headers, **caller})
    assert resp.status == 503
    assert (await resp.json())["code"] == "STORE_UNAVAILABLE"
    spans = await collector.wait_trace(TRACE, 2)
    server, store = only(spans, SERVER), only(spans, INTERNAL)
    assert (server.status, server.attributes["error.type"]) == (ERROR, "store_unavailable")
    assert (store.status, store.attributes["error.type"]) == (ERROR, "StoreUnavailable")
    assert store.parent_id == server.span_id
    assert "gateway.decision" not in store.attributes  # nothing was decided
    assert [s for s in spans if s.kind == CLIENT] == []
