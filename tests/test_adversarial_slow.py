"""Slow clients end: a trickled body meets its total deadline, a client that stops reading
its response meets the write deadline, and neither is blamed on the upstream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from yarl import URL

from gateway.settings import Limits
from tests.adversarial import RawUpstream, Received, Reply, read_response, request_bytes, send_raw
from tests.conftest import GatewayFactory, Harness


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.close()


def upstream_errors(gw: Harness) -> float:
    registry = gw.gateway.metrics.registry
    return sum(
        registry.get_sample_value("gateway_upstream_errors_total", {"upstream": "/", "kind": k})
        or 0.0
        for k in ("refused", "timeout", "broken")
    )


def decisions(gw: Harness, outcome: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(
        "gateway_decisions_total", {"tier": "anonymous", "route": "logic", "outcome": outcome}
    )
    return value or 0.0


async def test_a_body_trickled_within_the_idle_bound_ends_at_the_total_deadline(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw = await make_gateway(
        upstreams=(("/", URL(raw.url)),),
        limits=Limits(body_timeout_seconds=1.0, body_idle_seconds=0.5),
    )
    account = await gw.account("anonymous")
    key = await gw.key(account)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(
        request_bytes(
            "POST", "/api/logic/upload", {"Authorization": f"Bearer {key}", "Content-Length": "80"}
        )
    )
    answer = asyncio.ensure_future(read_response(reader, timeout=30))
    sent = 0
    # one byte every 0.2 s never trips the idle bound; 80 of them would take 16 s
    while not answer.done() and sent < 80:
        try:
            writer.write(b"x")
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(0.2)
    response = await answer
    writer.close()
    assert response.status == 408, response.body
    assert sent < 80
    assert response.json()["code"]
    # the client's slowness is no upstream error
    assert upstream_errors(gw) == 0


async def test_a_client_that_stops_reading_frees_the_upstream_connection(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    big = b"y" * (32 * 1024 * 1024)

    async def answer(request: Received) -> Reply:
        return Reply(body=big if request.target == "/api/logic/big" else b"{}")

    raw.script = answer
    gw = await make_gateway(
        upstreams=(("/", URL(raw.url)),),
        client_write_seconds=0.3,
        upstream_max_connections=1,
        connect_timeout_seconds=5.0,
    )
    headers = await gw.caller("anonymous")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.client.port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request_bytes("GET", "/api/logic/big", headers))
    await writer.drain()
    await asyncio.wait_for(raw.arrived.wait(), 20)
    # never read: the gateway gives up on this client and closes the upstream side too
    await asyncio.wait_for(raw.peer_closed[0].wait(), 20)
    # the pool's one connection is free again: another caller is served
    wire = request_bytes("GET", "/api/logic/small", {**headers, "Connection": "close"})
    assert (await send_raw(gw.client.port, wire)).status == 200
    writer.close()
    assert decisions(gw, "client_stalled") == 1
    assert upstream_errors(gw) == 0


async def test_a_pool_held_by_stalled_readers_is_the_gateways_busyness_not_the_upstreams(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    big = b"y" * (32 * 1024 * 1024)

    async def answer(request: Received) -> Reply:
        return Reply(body=big)

    raw.script = answer
    gw = await make_gateway(
        upstreams=(("/", URL(raw.url)),),
        client_write_seconds=60.0,
        upstream_max_connections=1,
        connect_timeout_seconds=0.3,
    )
    account = await gw.account("anonymous")
    key = await gw.key(account)
    auth = {"Authorization": f"Bearer {key}"}
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.client.port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(request_bytes("GET", "/api/logic/big", auth))
    await writer.drain()
    await asyncio.wait_for(raw.arrived.wait(), 20)
    # the one connection relays to a client that does not read: the next caller waits in vain
    wire = request_bytes("GET", "/api/logic/next", {**auth, "Connection": "close"})
    response = await send_raw(gw.client.port, wire)
    writer.close()
    assert response.status == 503, response.body
    assert response.json()["code"] == "GATEWAY_BUSY"
    assert response.headers["retry-after"] == "1"
    assert upstream_errors(gw) == 0
    # never sent, so refunded: only the stalled reader's call stays charged
    usage = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    assert (await usage.json())["meters"]["api_calls"]["used"] == 1
