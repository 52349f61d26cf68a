"""The client gets the upstream's status and bytes: no redirects followed, nothing decoded."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

GZIPPED = gzip.compress(b"quota gateway " * 4096, mtime=0)


class Recorder:
    """An upstream with one behaviour per path, recording raw targets as they arrived."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.headers: list[CIMultiDict[str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.targets.append(request.raw_path)
        self.headers.append(CIMultiDict(request.headers))
        path = request.raw_path.partition("?")[0]
        if path == "/api/redirect":
            return web.Response(status=302, headers={"Location": "/api/elsewhere?from=redirect"})
        if path == "/api/gzip":
            return web.Response(
                body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
            )
        if path == "/api/cookies":
            return web.Response(
                text="ok",
                headers=CIMultiDict(
                    [("Set-Cookie", "a=1; Path=/; HttpOnly"), ("Set-Cookie", "b=2; Path=/api")]
                ),
            )
        if path == "/api/empty":
            return web.Response(status=204)
        if path == "/api/cached":
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=b"x" * 1234, headers={"ETag": '"v1"'})


@pytest.fixture
async def recorded(make_gateway: GatewayFactory, aiohttp_server: Any) -> tuple[Harness, Recorder]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = await aiohttp_server(app)
    return await make_gateway(upstreams=(("/", server.make_url("")),)), recorder


async def test_redirects_reach_the_client_unfollowed(
    recorded: tuple[Harness, Recorder],
) -> None:
    gw, upstream = recorded
    resp = await gw.client.get(
        "/api/redirect", headers=await gw.caller("anonymous"), allow_redirects=False
    )
    assert resp.status == 302
    assert resp.headers["Location"] == "/api/elsewhere?from=redirect"
    # the gateway did not follow it on the client's behalf
    assert upstream.targets == ["/api/redirect"]


async def test_compressed_bytes_pass_untouched(recorded: tuple[Harness, Recorder]) -> None:
    gw, upstream = recorded
    url = gw.client.make_url("/api/gzip")
    headers = {**(await gw.caller("anonymous")), "Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        assert int(resp.headers["Content-Length"]) == len(GZIPPED)
        assert await resp.read() == GZIPPED
    # the client's Accept-Encoding went up as sent; the gateway added none of its own
    assert upstream.headers[-1]["Accept-Encoding"] == "gzip"


async def test_every_set_cookie_header_is_kept(recorded: tuple[Harness, Recorder]) -> None:
    gw, _ = recorded
    resp = await gw.client.get("/api/cookies", headers=await gw.caller("anonymous"))
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/; HttpOnly", "b=2; Path=/api"]


async def test_query_strings_are_forwarded_byte_for_byte(
    recorded: tuple[Harness, Recorder],
) -> None:
    gw, upstream = recorded
    query = "b=2&a=1&a=%2B&plus=+&sp=%20x&slash=/&q=?&semi=a;b&pct=%25&empty=&flag&u=%C3%A9"
    url = URL(str(gw.client.make_url("/api/search")) + "?" + query, encoded=True)
    resp = await gw.client.session.get(url, headers=await gw.caller("anonymous"))
    assert resp.status == 200
    assert upstream.targets[-1] == "/api/search?" + query


@pytest.mark.parametrize(
    ("method", "path", "status", "length"),
    [
        ("HEAD", "/api/things", 200, "1234"),
        ("GET", "/api/empty", 204, None),
        ("GET", "/api/cached", 304, None),
    ],
)
async def test_bodiless_answers_pass_through_and_keep_the_connection_usable(
    recorded: tuple[Harness, Recorder],
    method: str,
    path: str,
    status: int,
    length: str | None,
) -> None:
    gw, _ = recorded
    headers = await gw.caller("anonymous")
    connector = aiohttp.TCPConnector(limit=1)  # one connection, so the follow-up reuses it
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, gw.client.make_url(path), headers=headers) as resp:
            assert resp.status == status
            assert resp.headers.get("Content-Length") == length
            if status != 204:
                assert resp.headers["ETag"] == '"v1"'
            assert await resp.read() == b""
        # a stray body byte would corrupt the next response on the same connection
        async with session.get(gw.client.make_url("/api/things"), headers=headers) as resp:
            assert resp.status == 200
            assert await resp.read() == b"x" * 1234


async def test_the_upstream_gets_the_clients_headers_and_only_ours_besides(
    recorded: tuple[Harness, Recorder],
) -> None:
    gw, upstream = recorded
    caller = await gw.caller("anonymous")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(
        b"GET /api/things HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        + f"Authorization: {caller['Authorization']}\r\n".encode()
        + b"X-Custom: kept\r\nx-custom: twice\r\n\r\n"
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
    writer.close()
    seen = upstream.headers[-1]
    assert seen.getall("X-Custom") == ["kept", "twice"]
    # no aiohttp defaults (Accept, User-Agent, Accept-Encoding, Content-Type) filled in
    assert sorted({k.lower() for k in seen}) == [
        "host",
        "traceparent",  # the gateway's hop of the trace (gateway/trace.py)
        "x-custom",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-gateway-account",
        "x-gateway-key-id",
        "x-gateway-route",
        "x-gateway-tier",
        "x-request-id",  # the gateway's, so upstream logs can be joined with its access log
    ]
    assert seen["X-Forwarded-Host"] == "gateway.test"


async def test_expect_continue_is_answered_by_the_gateway_not_forwarded(
    make_gateway: GatewayFactory,
) -> None:
    heads: list[bytes] = []

    async def old_fashioned(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # an upstream that never sends 100 Continue: it just waits for the body
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        length = int(head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(old_fashioned, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway(upstreams=(("/", URL(f"http://127.0.0.1:{port}")),))
        resp = await asyncio.wait_for(
            gw.client.post(
                "/api/things",
                data=b"payload",
                expect100=True,
                headers=await gw.caller("anonymous"),
            ),
            10,
        )
        assert resp.status == 200
        assert await resp.read() == b"payload"
        assert b"expect" not in heads[-1].lower()
    finally:
        server.close()
        await server.wait_closed()
