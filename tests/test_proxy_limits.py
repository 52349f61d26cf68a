"""Limits a client can hit: body size, header size and count, time to send the head."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.settings import Limits
from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


LIMIT = 1000


class CountingUpstream:
    """Counts body bytes as they arrive, even when the sender gives up halfway."""

    def __init__(self) -> None:
        self.started = 0
        self.received = 0
        self.done = asyncio.Event()
        self._progress = asyncio.Condition()

    async def reached(self, size: int) -> None:
        """Wait until ``size`` bytes have arrived (bounded)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.received >= size), 10)

    async def handle(self, request: web.Request) -> web.Response:
        self.started += 1
        try:
            async for chunk in request.content.iter_any():
                self.received += len(chunk)
                async with self._progress:
                    self._progress.notify_all()
        except Exception:  # the gateway cut the upload short; the count is what matters
            return web.Response(status=400)
        finally:
            self.done.set()
        return web.json_response({"bytes": self.received})


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


async def used(gw: Harness, account: str, meter: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"][meter]["used"])


@pytest.fixture
async def limited(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> tuple[Harness, CountingUpstream, str, dict[str, str]]:
    counting = CountingUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counting.handle)
    server = await aiohttp_server(app)
    gw = await make_gateway(
        upstreams=(("/", server.make_url("")),), limits=Limits(max_body_bytes=LIMIT)
    )
    account = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account)}"}
    return gw, counting, account, headers


async def test_declared_body_over_the_limit_is_413_and_never_sent(
    limited: tuple[Harness, CountingUpstream, str, dict[str, str]],
) -> None:
    gw, upstream, account, headers = limited
    resp = await gw.client.post("/api/logic/upload", data=b"x" * (LIMIT + 1), headers=headers)
    assert resp.status == 413
    body = await resp.json()
    assert body["code"] == "PAYLOAD_TOO_LARGE"
    assert upstream.started == 0
    # the call it was charged for is given back
    assert await used(gw, account, "logic_engine_calls") == 0
    assert await used(gw, account, "api_calls") == 0


async def test_streamed_body_passing_the_limit_is_413_and_cut_at_the_limit(
    limited: tuple[Harness, CountingUpstream, str, dict[str, str]],
) -> None:
    gw, upstream, account, headers = limited

    async def paced() -> AsyncIterator[bytes]:
        # each chunk is sent once the previous one reached the upstream, so the limit is
        # passed mid-stream, with the request already under way upstream
        sent = 0
        for _ in range(10):
            yield b"x" * 400
            sent += 400
            if sent <= LIMIT:
                await upstream.reached(sent)

    resp = await gw.client.post("/api/logic/upload", data=paced(), headers=headers)
    assert resp.status == 413
    assert (await resp.json())["code"] == "PAYLOAD_TOO_LARGE"
    await asyncio.wait_for(upstream.done.wait(), 10)
    assert upstream.started == 1
    assert upstream.received == 800  # two whole chunks; the third would pass the limit
    # the request had reached the upstream: a call stays charged once a byte was written
    assert await used(gw, account, "logic_engine_calls") == 1


async def test_streamed_body_at_the_limit_passes_whole(
    limited: tuple[Harness, CountingUpstream, str, dict[str, str]],
) -> None:
    gw, _, account, headers = limited
    resp = await gw.client.post("/api/logic/upload", data=chunks(4, LIMIT // 4), headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"bytes": LIMIT}
    assert await used(gw, account, "logic_engine_calls") == 1


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


@pytest.fixture
async def strict(make_gateway: GatewayFactory) -> Harness:
    return await make_gateway(limits=Limits(max_header_bytes=1024, max_headers=20))


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: g\r\nX-Big: " + b"a" * 1100 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: g\r\n" + b"X-" + b"n" * 1100 + b": 1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: g\r\n"
        + b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(25))
        + b"\r\n",
        b"GET /health?" + b"q" * 1100 + b" HTTP/1.1\r\nHost: g\r\n\r\n",
    ],
    ids=["long-value", "long-name", "too-many", "long-request-line"],
)
async def test_oversized_heads_get_431_json_and_the_gateway_keeps_serving(
    strict: Harness,
    request_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        status, fields, body = await exchange(strict.client.port, request_bytes)
    assert status == 431
    assert fields["Content-Type"].startswith("application/json")
    assert json.loads(body)["code"] == "REQUEST_HEADERS_TOO_LARGE"
    assert strict.upstream.requests == []
    # the client's bytes are not echoed back, and bad input is no error in our logs
    assert b"aaaa" not in body and b"nnnn" not in body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    resp = await strict.client.get("/health", headers={"X-Fits": "a" * 900})
    assert resp.status == 200
    assert strict.upstream.count("/health") == 1


async def test_garbage_gets_400_json(strict: Harness) -> None:
    status, _, body = await exchange(strict.client.port, b"\x16\x03\x01 hello\r\n\r\n")
    assert status == 400
    assert json.loads(body)["code"] == "BAD_REQUEST"


@pytest.fixture
async def impatient(make_gateway: GatewayFactory) -> Harness:
    return await make_gateway(limits=Limits(header_timeout_seconds=0.5))


async def closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection without sending a byte (bounded wait)."""
    return await asyncio.wait_for(reader.read(), 10) == b""


async def test_a_partial_request_line_is_disconnected(impatient: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.client.port)
    writer.write(b"GET /health HT")
    await writer.drain()
    assert await closed_without_answer(reader)
    writer.close()
    assert impatient.upstream.requests == []


async def test_headers_trickled_line_by_line_are_disconnected(impatient: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.client.port)
    closed = asyncio.ensure_future(closed_without_answer(reader))
    writer.write(b"GET /health HTTP/1.1\r\nHost: g\r\n")
    sent = 0
    # each line arrives well within the timeout, but the head as a whole never completes
    while not closed.done() and sent < 100:
        try:
            writer.write(b"X-Slow-%d: 1\r\n" % sent)
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(0.05)
    assert await closed
    assert sent < 100
    writer.close()
    assert impatient.upstream.requests == []


async def test_a_partial_second_request_on_a_kept_alive_connection_is_disconnected(
    impatient: Harness,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.client.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 10)
    writer.write(b"GET /health HTTP/1.1\r\nHost:")
    await writer.drain()
    assert await closed_without_answer(reader)
    writer.close()
    assert impatient.upstream.count("/health") == 1
    # and the gateway still answers whoever asks properly
    resp = await impatient.client.get("/health")
    assert resp.status == 200
