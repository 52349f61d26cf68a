"""A relayed head goes out with its body's first bytes only when they are already there."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


class SlowBody:
    """An upstream that sends its head, then its body only when told to."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # the head leaves now, no body byte with it
        await self.release.wait()
        await response.write(b"data: late\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def slow(make_gateway: GatewayFactory, aiohttp_server: Any) -> tuple[Harness, SlowBody]:
    upstream = SlowBody()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    return await make_gateway(upstreams=(("/", server.make_url("")),)), upstream


async def test_a_head_whose_body_is_on_its_way_is_not_held_back(
    slow: tuple[Harness, SlowBody],
) -> None:
    gw, upstream = slow
    headers = await gw.caller("anonymous")
    # The upstream sends no body byte until the client has seen the head: a gateway that
    # held the head back to send it with the body would never answer this.
    resp = await asyncio.wait_for(gw.client.get("/api/events", headers=headers), timeout=10)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    upstream.release.set()
    assert await asyncio.wait_for(resp.read(), timeout=10) == b"data: late\n\n"
