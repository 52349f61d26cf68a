"""WebSockets: an upgrade on a `websocket: true` route is identified, gated and metered as
one call, refused before the upgrade when over quota, then tunnelled both ways with idle and
total deadlines; the refund rule is the forwarder's (only when the upstream was never reached).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from yarl import URL

from gateway.settings import WebSocketSettings
from tests.conftest import GatewayFactory, Harness
from tests.redis_servers import free_port

STORES = ("memory", "redis")


def ws_policy(calls: int) -> str:
    return f"""\
name: ws-test
default_tier: free
identity:
  key_types:
    - {{prefix: k_, kind: user}}
meters:
  calls: {{kind: counter, period: day, scope: account}}
tiers:
  free:
    limits: {{calls: {calls}}}
routes:
  - name: stream
    path: /ws/**
    websocket: true
    consume: {{calls: 1}}
  - name: api
    path: /api/**
    consume: {{calls: 1}}
"""


@dataclass
class WsUpstream:
    """A real upstream: echoes on /ws/**, records every handshake's headers."""

    handshakes: list[dict[str, str]] = field(default_factory=list)
    plain: list[dict[str, str]] = field(default_factory=list)
    refuse: bool = False
    close_with: int | None = None
    url: URL | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            self.plain.append(dict(request.headers))
            return web.json_response({"upgraded": False})
        self.handshakes.append(dict(request.headers))
        if self.refuse:
            return web.json_response({"error": "no"}, status=403)
        ws = web.WebSocketResponse(protocols=("chat.v1",))
        await ws.prepare(request)
        if self.close_with is not None:
            await ws.close(code=self.close_with, message=b"bye")
            return ws
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


@pytest.fixture
async def ws_upstream(aiohttp_server: Any) -> WsUpstream:
    state = WsUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    server = await aiohttp_server(app)
    state.url = server.make_url("")
    return state


async def ws_gateway(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    upstream_url: URL,
    *,
    calls: int = 10,
    **overrides: Any,
) -> tuple[Harness, str, dict[str, str]]:
    policy = tmp_path / "ws.yaml"
    policy.write_text(ws_policy(calls))
    gw = await make_gateway(
        str(policy.with_suffix("")), upstreams=(("/", upstream_url),), **overrides
    )
    account = await gw.account("free")
    key = await gw.key(account, "k_")
    return gw, account, {"Authorization": f"Bearer {key}"}


async def used(gw: Harness, account: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["meters"]["calls"]["used"])


async def test_messages_flow_both_ways_and_the_upgrade_costs_one_call(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    assert ws_upstream.url is not None
    gw, account, headers = await ws_gateway(make_gateway, tmp_path, ws_upstream.url)
    async with gw.client.ws_connect(
        "/ws/echo", headers=headers, protocols=("chat.v2", "chat.v1")
    ) as ws:
        assert ws.protocol == "chat.v1"  # the upstream's choice reaches the client
        for i in range(20):
            await ws.send_str(f"m{i}")
            assert (await ws.receive_str(timeout=5)) == f"echo:m{i}"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive_bytes(timeout=5)) == b"\x02\x01\x00"
    # twenty messages, one upgrade: one call
    assert await used(gw, account) == 1
    seen = ws_upstream.handshakes[0]
    assert seen["X-Gateway-Account"] == account
    assert seen["X-Gateway-Route"] == "stream"
    assert "Authorization" not in seen  # the gateway key is ours alone
    assert seen["Sec-WebSocket-Key"]  # the gateway's own handshake with the upstream


async def test_over_quota_the_upgrade_is_refused_before_the_upstream_sees_it(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    assert ws_upstream.url is not None
    gw, _, headers = await ws_gateway(make_gateway, tmp_path, ws_upstream.url, calls=1)
    async with gw.client.ws_connect("/ws/echo", headers=headers) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "echo:hi"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect("/ws/echo", headers=headers)
    assert refused.value.status == 429
    assert len(ws_upstream.handshakes) == 1
    # no credential: refused before the upgrade too
    with pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
        await gw.client.ws_connect("/ws/echo")
    assert anonymous.value.status == 401
    assert len(ws_upstream.handshakes) == 1


async def test_an_unreachable_upstream_is_refunded_a_refused_handshake_is_not(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    dead = URL(f"http://127.0.0.1:{free_port()}")
    gw, account, headers = await ws_gateway(make_gateway, tmp_path, dead)
    with pytest.raises(aiohttp.WSServerHandshakeError) as down:
        await gw.client.ws_connect("/ws/echo", headers=headers)
    assert down.value.status == 502
    assert await used(gw, account) == 0  # never reached: refunded

    assert ws_upstream.url is not None
    ws_upstream.refuse = True
    gw, account, headers = await ws_gateway(make_gateway, tmp_path, ws_upstream.url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect("/ws/echo", headers=headers)
    assert refused.value.status == 502
    assert len(ws_upstream.handshakes) == 1
    assert await used(gw, account) == 1  # the upstream read it: charged


async def test_an_upstream_close_code_reaches_the_client(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    assert ws_upstream.url is not None
    ws_upstream.close_with = 4000
    gw, _, headers = await ws_gateway(make_gateway, tmp_path, ws_upstream.url)
    async with gw.client.ws_connect("/ws/echo", headers=headers) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4000


async def test_an_idle_tunnel_is_closed_by_the_gateway(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    assert ws_upstream.url is not None
    gw, _, headers = await ws_gateway(
        make_gateway,
        tmp_path,
        ws_upstream.url,
        websocket=WebSocketSettings(idle_seconds=0.3),
    )
    async with gw.client.ws_connect("/ws/echo", headers=headers) as ws:
        await ws.send_str("one")
        assert (await ws.receive_str(timeout=5)) == "echo:one"
        # then silence both ways: the gateway ends it, well before this test's bound
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1001


async def test_a_tunnel_ends_at_its_total_deadline_however_busy(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    assert ws_upstream.url is not None
    gw, _, headers = await ws_gateway(
        make_gateway,
        tmp_path,
        ws_upstream.url,
        websocket=dataclasses.replace(WebSocketSettings(), max_seconds=0.5),
    )
    async with gw.client.ws_connect("/ws/echo", headers=headers) as ws:
        async with asyncio.timeout(10):
            while True:
                await ws.send_str("busy")
                msg = await ws.receive()
                if msg.type != WSMsgType.TEXT:
                    break
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1001


async def test_an_upgrade_on_a_route_without_websocket_is_a_plain_request(
    make_gateway: GatewayFactory, tmp_path: Path, ws_upstream: WsUpstream
) -> None:
    assert ws_upstream.url is not None
    gw, _, headers = await ws_gateway(make_gateway, tmp_path, ws_upstream.url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as plain:
        await gw.client.ws_connect("/api/echo", headers=headers)
    assert plain.value.status == 200  # Upgrade is hop-by-hop there: dropped, not tunnelled
    assert ws_upstream.handshakes == []
    assert "Upgrade" not in ws_upstream.plain[0]
