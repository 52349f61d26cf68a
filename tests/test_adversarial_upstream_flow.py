"""Back-pressure through the proxy's own upstream client, both ways: a client that reads
nothing stops the gateway reading the upstream, and an upstream that reads nothing stops
the gateway reading the client; once the slow side reads again, everything flows once."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.settings import Limits
from tests.adversarial import read_response, request_bytes
from tests.conftest import GatewayFactory
from tests.wire import Out, Seen, WireUpstream, gateway_on, get

STORES = ("memory", "redis")


async def test_a_client_that_reads_nothing_stops_the_gateway_reading_the_upstream(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    # far more than every buffer on the way could hold (the gateway's 256 KiB, the kernel's
    # socket buffers both sides): only a gateway that keeps reading lets all of it out
    total, piece = 64 * 1024 * 1024, b"p" * (1024 * 1024)
    finished = asyncio.Event()

    async def flood(seen: Seen) -> Out:
        writer = wire.writers[seen.connection]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()  # as fast as the gateway takes it, no faster
        finished.set()
        return Out(b"")

    wire.answer = flood
    gw, key = await gateway_on(make_gateway, wire)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(get("/api/logic/big", key))
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        # the client reads no further; a gateway without back-pressure would drain the
        # upstream into its own memory in well under a second here
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), 3)
        assert not finished.is_set()
        received = 0
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 30):
            received += len(chunk)
        assert received == total  # and once the client reads again, all of it flows
        assert finished.is_set()
    finally:
        writer.close()


async def test_an_upstream_that_reads_nothing_stops_the_gateway_reading_the_client(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    total, piece = 64 * 1024 * 1024, b"u" * (1024 * 1024)
    wire.hold_body = asyncio.Event()
    gw = await make_gateway(upstreams=(("/", wire.url),), limits=Limits(max_body_bytes=total))
    key = await gw.key(await gw.account("anonymous"))
    head = request_bytes(
        "POST",
        "/api/logic/upload",
        {"Authorization": f"Bearer {key}", "Connection": "close", "Content-Length": str(total)},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    sent = asyncio.Event()

    async def upload() -> None:
        writer.write(head)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()  # as fast as the gateway takes it, no faster
        sent.set()

    uploading = asyncio.ensure_future(upload())
    try:
        # the upstream takes nothing yet; a gateway reading the client regardless would have
        # the whole body in its memory in well under a second here
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sent.wait(), 3)
        assert not sent.is_set()
        wire.hold_body.set()  # the upstream reads: everything flows, once
        await asyncio.wait_for(sent.wait(), 60)
        assert (await read_response(reader, timeout=60)).status == 200
        [seen] = wire.seen
        assert len(seen.body) == total
    finally:
        uploading.cancel()
        writer.close()
