"""The proxy port's low-level listener (gateway/listener.py): no router per request, and the
same answers as the app it replaced, on raw sockets and on one keep-alive connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from gateway.metrics import exposition
from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


class Connection:
    """One client socket, reading responses framed by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def ask(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(fields.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return int(lines[0].split()[1]), fields, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[web.UrlDispatcher, str]]:
    """The routers that resolved a request while the test ran, with its target."""
    seen: list[tuple[web.UrlDispatcher, str]] = []
    resolve = web.UrlDispatcher.resolve

    async def counting(self: web.UrlDispatcher, request: web.Request) -> Any:
        seen.append((self, request.raw_path))
        return await resolve(self, request)

    monkeypatch.setattr(web.UrlDispatcher, "resolve", counting)
    return seen


def by_proxy_router(gw: Harness, routed: list[tuple[web.UrlDispatcher, str]]) -> list[str]:
    """The targets the proxy app's own router resolved (the test upstream has a router too)."""
    assert gw.client.server.app is not None
    return [target for router, target in routed if router is gw.client.server.app.router]


async def test_answered_and_proxied_routes_share_one_keep_alive_connection_without_the_router(
    make_gateway: GatewayFactory, routed: list[tuple[web.UrlDispatcher, str]]
) -> None:
    gw: Harness = await make_gateway()
    conn = await Connection.open(gw.client.port)
    try:
        status, fields, _ = await conn.ask(b"GET /health?x=1 HTTP/1.1\r\nHost: g\r\n\r\n")
        assert status == 200 and fields["x-request-id"]
        assert gw.upstream.requests[-1].path == "/health"
        # a route the gateway answers itself (it reads a body under the body deadlines)
        status, fields, body = await conn.ask(
            b"POST /api/projects/anonymous HTTP/1.1\r\nHost: g\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert status == 200, body
        key = json.loads(body)["user_api_key"]
        # and a metered, proxied call with the key it handed out, still on the same socket
        status, fields, _ = await conn.ask(
            b"GET /api/logic/x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\n\r\n"
        )
        assert status == 200
        assert "ratelimit-policy" in fields
        assert gw.upstream.count("/api/logic/x") == 1
    finally:
        conn.close()
    assert by_proxy_router(gw, routed) == []


async def test_a_target_that_is_not_origin_form_gets_the_routers_answer_as_before(
    make_gateway: GatewayFactory, routed: list[tuple[web.UrlDispatcher, str]]
) -> None:
    gw: Harness = await make_gateway()
    conn = await Connection.open(gw.client.port)
    try:
        for raw in (b"OPTIONS * HTTP/1.1", b"CONNECT upstream.example:443 HTTP/1.1"):
            status, fields, body = await conn.ask(raw + b"\r\nHost: g\r\n\r\n")
            assert (status, json.loads(body)) == (
                404,
                {"code": "NOT_FOUND", "message": "404: Not Found"},
            )
            assert fields["x-request-id"]  # the access log and the boundary saw it
        status, _, _ = await conn.ask(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
        assert status == 200
    finally:
        conn.close()
    assert by_proxy_router(gw, routed) == ["*", "upstream.example:443"]
    assert gw.upstream.count("/") == 1


async def test_a_malformed_request_after_a_good_one_gets_json_400_and_the_port_keeps_serving(
    make_gateway: GatewayFactory,
) -> None:
    gw: Harness = await make_gateway()
    conn = await Connection.open(gw.client.port)
    try:
        status, _, _ = await conn.ask(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
        assert status == 200
        status, fields, body = await conn.ask(b"GET /health HTTP/1.1 extra\r\nHost: g\r\n\r\n")
        assert status == 400 and fields["content-type"].startswith("application/json")
        assert json.loads(body)["code"] == "BAD_REQUEST"
        assert await conn.closed()
    finally:
        conn.close()
    again = await Connection.open(gw.client.port)
    try:
        status, _, _ = await again.ask(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
        assert status == 200
    finally:
        again.close()
    assert gw.upstream.count("/health") == 2


async def test_an_unsupported_expectation_is_refused_before_anything_counts_it(
    make_gateway: GatewayFactory,
) -> None:
    gw: Harness = await make_gateway()
    conn = await Connection.open(gw.client.port)
    try:
        status, fields, body = await conn.ask(
            b"POST /health HTTP/1.1\r\nHost: g\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n"
        )
    finally:
        conn.close()
    assert (status, json.loads(body)["code"]) == (417, "EXPECTATION_FAILED")
    # as with the router: the expect handler answers before the access log and the boundary
    assert "x-request-id" not in fields
    assert gw.upstream.requests == []
    assert 'route="health"' not in exposition(gw.gateway.metrics).decode()
