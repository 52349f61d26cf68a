"""Overload is shed explicitly: past max_in_flight a worker answers 503 OVERLOADED at once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from yarl import URL

from tests.conftest import GatewayFactory

STORES = ("memory", "redis")


class HeldUpstream:
    """An upstream that holds every request until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = 0
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        self.changed.set()
        await self.release.wait()
        return web.json_response({"ok": True})

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(20):
            while self.arrived < count:
                self.changed.clear()
                await self.changed.wait()


async def test_requests_past_max_in_flight_are_shed_uncharged_then_admitted_again(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    held = HeldUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", held.handle)
    server = await aiohttp_server(app)
    gw = await make_gateway(upstreams=(("/", URL(str(server.make_url("")))),), max_in_flight=2)
    account = await gw.account("anonymous")
    auth = {"Authorization": f"Bearer {await gw.key(account)}"}

    async def call(i: int) -> int:
        resp = await gw.client.post(f"/api/logic/run/{i}", headers=auth)
        await resp.read()
        return resp.status

    first = [asyncio.create_task(call(i)) for i in range(2)]
    await held.wait_for(2)
    resp = await gw.client.post("/api/logic/run/shed", headers=auth)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    body = await resp.json()
    assert body["code"] == "OVERLOADED"
    registry = gw.gateway.metrics.registry
    assert registry.get_sample_value("gateway_overload_shed_total") == 1
    outcome = {"tier": "-", "route": "-", "outcome": "overloaded"}
    assert registry.get_sample_value("gateway_decisions_total", outcome) == 1
    assert held.arrived == 2

    held.release.set()
    assert await asyncio.gather(*first) == [200, 200]
    assert await call(3) == 200
    assert registry.get_sample_value("gateway_overload_shed_total") == 1
    # the shed request was never metered: three calls charged, not four
    usage = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    assert (await usage.json())["meters"]["api_calls"]["used"] == 3
