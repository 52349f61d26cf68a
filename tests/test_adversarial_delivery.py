"""Exactly-once delivery: a request is written to the upstream at most once, a call is refunded
only when the upstream provably never received it, and the access log says which."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway.proxy.forward import Forwarder, Upstreams
from tests.adversarial import RawUpstream, Received, Reply, request_bytes, send_raw
from tests.conftest import GatewayFactory, Harness
from tests.live_scrape import closed_port

STORES = ("memory", "redis")


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.close()


async def usage(gw: Harness, account: str) -> dict[str, int]:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    meters = (await resp.json())["meters"]
    return {name: meters[name]["used"] for name in ("logic_engine_calls", "api_calls")}


def logged(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def call(gw: Harness, method: str, target: str, key: str) -> int:
    wire = request_bytes(method, target, {"Authorization": f"Bearer {key}", "Connection": "close"})
    return (await send_raw(gw.client.port, wire)).status


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "POST"])
async def test_a_request_the_upstream_dropped_is_sent_once_and_stays_charged(
    make_gateway: GatewayFactory, raw: RawUpstream, tmp_path: Path, method: str
) -> None:
    async def drop(_: Received) -> None:
        return None  # read the request, then close without a word

    raw.script = drop
    log = tmp_path / "access.log"
    gw = await make_gateway(upstreams=(("/", URL(raw.url)),), access_log=str(log))
    account = await gw.account("anonymous")
    key = await gw.key(account)
    assert await call(gw, method, "/api/logic/run", key) == 502
    # aiohttp would have re-sent the GET, PUT and DELETE on a new connection
    assert [(r.method, r.target) for r in raw.received] == [(method, "/api/logic/run")]
    assert await usage(gw, account) == {"logic_engine_calls": 1, "api_calls": 1}
    line = logged(log)[-1]
    assert line["status"] == 502
    assert line["refunded"] == []


async def test_an_answer_after_the_read_timeout_is_504_and_stays_charged(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    release = asyncio.Event()

    async def slow(_: Received) -> Reply:
        await release.wait()  # did the work, answers too late
        return Reply()

    raw.script = slow
    gw = await make_gateway(upstreams=(("/", URL(raw.url)),), read_timeout_seconds=0.3)
    account = await gw.account("anonymous")
    assert await call(gw, "GET", "/api/logic/run", await gw.key(account)) == 504
    release.set()
    assert len(raw.received) == 1
    assert await usage(gw, account) == {"logic_engine_calls": 1, "api_calls": 1}


async def test_a_refused_connection_is_refunded_and_logged_as_refunded(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = await make_gateway(
        upstreams=(("/", URL(f"http://127.0.0.1:{closed_port()}")),), access_log=str(log)
    )
    account = await gw.account("anonymous")
    assert await call(gw, "GET", "/api/logic/run", await gw.key(account)) == 502
    assert await usage(gw, account) == {"logic_engine_calls": 0, "api_calls": 0}
    line = logged(log)[-1]
    assert line["meters"] == [
        {"meter": "logic_engine_calls", "cost": 1},
        {"meter": "api_calls", "cost": 1},
        {"meter": "request_rate", "cost": 1},  # its unit goes back to the bucket too
    ]
    assert line["refunded"] == line["meters"]


async def test_a_connection_the_upstream_closed_is_not_reused(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    async def once(_: Received) -> Reply:
        return Reply(hang_up=True)  # keep-alive implied, then closed anyway

    raw.script = once
    gw = await make_gateway(upstreams=(("/", URL(raw.url)),))
    account = await gw.account("anonymous")
    key = await gw.key(account)
    assert await call(gw, "GET", "/api/logic/a", key) == 200
    assert await call(gw, "GET", "/api/logic/b", key) == 200
    assert [(r.target, r.connection) for r in raw.received] == [
        ("/api/logic/a", 0),
        ("/api/logic/b", 1),
    ]


async def test_an_idle_pooled_connection_is_closed_by_the_gateway(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw = await make_gateway(upstreams=(("/", URL(raw.url)),), pool_idle_seconds=0.1)
    account = await gw.account("anonymous")
    key = await gw.key(account)
    assert await call(gw, "GET", "/api/logic/a", key) == 200
    # the gateway, not the upstream, ends the idle connection: no request can race its close
    await asyncio.wait_for(raw.peer_closed[0].wait(), 10)
    assert await call(gw, "GET", "/api/logic/b", key) == 200
    assert [r.connection for r in raw.received] == [0, 1]


async def test_the_forwarder_turns_off_aiohttps_silent_resend() -> None:
    from prometheus_client import CollectorRegistry

    from gateway.metrics import Metrics

    forwarder = Forwarder(
        Upstreams([]),
        max_body_bytes=1,
        connect_timeout=1,
        read_timeout=1,
        metrics=Metrics(CollectorRegistry()),
    )
    async with aiohttp.ClientSession() as session:
        forwarder.attach(session)
        assert session._retry_connection is False
