"""The proxy's own upstream client, seen from the wire: an upstream on a raw socket records
every byte it receives and answers with bytes a test writes, framing mistakes included.

Each request reaches the upstream once, as the client sent it minus the hop-by-hop headers; an
answer that could smuggle a second response is refused; a connection is reused only after its
response was read to the end."""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.headers import HOP_BY_HOP
from tests.adversarial import chunked, read_response, request_bytes, send_raw
from tests.conftest import GatewayFactory
from tests.wire import OK, Out, Seen, WireUpstream, decisions, gateway_on, get, settled

STORES = ("memory", "redis")


async def test_each_request_arrives_once_with_its_exact_target_and_no_hop_by_hop_header(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    gw, key = await gateway_on(make_gateway, wire)
    target = "/api/logic/caf%C3%A9/a%20b?q=%41%2f&x=a+b;c&&=%zz"
    hop = {
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-T",
        "Proxy-Connection": "keep-alive",
        "Proxy-Authorization": "Basic eDp5",
        "X-Named": "by Connection",
    }
    wire_request = request_bytes(
        "GET", target, {"Authorization": f"Bearer {key}", "Connection": "x-named", **hop}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        for _ in range(3):
            writer.write(wire_request)
            await writer.drain()
            assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    lines = [seen.line for seen in wire.seen]
    assert lines == [f"GET {target} HTTP/1.1".encode()] * 3
    # nothing re-sent: the bytes received hold exactly the three requests
    assert sum(raw.count(b" HTTP/1.1\r\n") for raw in wire.raw) == 3
    for seen in wire.seen:
        names = seen.names()
        assert not set(names) & HOP_BY_HOP
        assert "x-named" not in names
        assert names.count("host") == 1
        assert f"host: {wire.url.host}:{wire.url.port}".encode() in seen.head.lower()


async def test_a_chunked_upload_arrives_chunked_whole_and_once(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    gw, key = await gateway_on(make_gateway, wire)
    pieces = (b"a" * 1000, b"b" * 70000, b"c")
    data = request_bytes(
        "POST",
        "/api/logic/upload",
        {"Authorization": f"Bearer {key}", "Connection": "close", "Transfer-Encoding": "chunked"},
        chunked(*pieces),
    )
    assert (await send_raw(gw.client.port, data)).status == 200
    [seen] = wire.seen
    assert seen.body == b"".join(pieces)
    assert b"transfer-encoding: chunked" in seen.head.lower()
    assert "content-length" not in seen.names()


async def test_an_answer_with_both_length_and_chunked_framing_is_502_and_never_reused(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def smuggle(seen: Seen) -> Out:
        if seen.line.startswith(b"GET /api/logic/smuggle"):
            # read by Content-Length, the bytes after the 0-chunk would be a second response
            return Out(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
            )
        return Out(OK)

    wire.answer = smuggle
    gw, key = await gateway_on(make_gateway, wire)
    assert (await send_raw(gw.client.port, get("/api/logic/smuggle", key))).status == 502
    await asyncio.wait_for(wire.closed[0].wait(), 10)
    after = await send_raw(gw.client.port, get("/api/logic/next", key))
    assert (after.status, after.body) == (200, b"ok")
    assert [seen.connection for seen in wire.seen] == [0, 1]


async def test_a_body_ending_early_cuts_the_client_short_and_the_connection_is_dropped(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def short(seen: Seen) -> Out:
        if seen.line.startswith(b"GET /api/logic/short"):
            return Out(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, close=True)
        return Out(OK)

    wire.answer = short
    gw, key = await gateway_on(make_gateway, wire)
    # the head went out before the body broke: the client is told by a cut connection, never
    # by a clean end, and the exchange counts as the upstream's failure
    with pytest.raises(asyncio.IncompleteReadError):
        await send_raw(gw.client.port, get("/api/logic/short", key))
    await settled(gw)
    assert decisions(gw, "upstream_broken") == 1
    after = await send_raw(gw.client.port, get("/api/logic/next", key))
    assert (after.status, after.body) == (200, b"ok")
    assert [seen.connection for seen in wire.seen] == [0, 1]


async def test_a_connection_is_reused_only_after_its_answer_was_read_to_the_end(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def slow(seen: Seen) -> Out:
        if seen.line.startswith(b"GET /api/logic/slow"):
            return Out(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhal")  # the rest later
        return Out(OK)

    wire.answer = slow
    gw, key = await gateway_on(make_gateway, wire)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(get("/api/logic/slow", key))
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 200"
        )
        # half of the first answer is still to come: the next request gets its own connection
        assert (await send_raw(gw.client.port, get("/api/logic/b", key))).status == 200
        wire.writers[0].write(b"f!!")
        assert await asyncio.wait_for(reader.read(), 10) == b"half!!"
    finally:
        writer.close()
    await settled(gw)
    # both answers were read whole: what follows rides the connections already open
    for path in ("/api/logic/c", "/api/logic/d"):
        assert (await send_raw(gw.client.port, get(path, key))).status == 200
    assert [seen.connection for seen in wire.seen[:2]] == [0, 1]
    assert len(wire.raw) == 2


async def test_a_close_delimited_body_is_relayed_whole_and_its_connection_not_reused(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    body = bytes(range(256)) * 1200  # 300 KB: past the point where reading pauses

    async def until_close(seen: Seen) -> Out:
        if seen.line.startswith(b"GET /api/logic/stream"):
            return Out(b"HTTP/1.1 200 OK\r\nContent-Type: x/y\r\n\r\n" + body, close=True)
        return Out(OK)

    wire.answer = until_close
    gw, key = await gateway_on(make_gateway, wire)
    relayed = await send_raw(gw.client.port, get("/api/logic/stream", key))
    assert (relayed.status, relayed.body) == (200, body)
    await settled(gw)
    assert (await send_raw(gw.client.port, get("/api/logic/next", key))).status == 200
    assert [seen.connection for seen in wire.seen] == [0, 1]


async def test_a_head_answer_ends_at_its_head_and_the_connection_serves_the_next(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def head_then_get(seen: Seen) -> Out:
        if seen.line.startswith(b"HEAD "):
            return Out(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")  # and no body
        return Out(OK)

    wire.answer = head_then_get
    gw, key = await gateway_on(make_gateway, wire)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    try:
        writer.write(get("/api/logic/h", key, method="HEAD"))
        await writer.drain()
        head = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and head.lower().count(b"content-length: 50") == 1
    assert head.endswith(b"\r\n\r\n")
    await settled(gw)
    after = await send_raw(gw.client.port, get("/api/logic/next", key))
    assert (after.status, after.body) == (200, b"ok")
    assert [seen.connection for seen in wire.seen] == [0, 0]


async def test_a_kept_alive_connection_dropped_under_a_request_is_502_never_a_resend(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def then_drop(seen: Seen) -> Out | None:
        return None if seen.line.startswith(b"PUT ") else Out(OK)

    wire.answer = then_drop
    gw, key = await gateway_on(make_gateway, wire)
    assert (await send_raw(gw.client.port, get("/api/logic/a", key))).status == 200
    await settled(gw)
    assert (await send_raw(gw.client.port, get("/api/logic/b", key, "PUT"))).status == 502
    await settled(gw)
    assert [(seen.line.split()[0], seen.connection) for seen in wire.seen] == [
        (b"GET", 0),
        (b"PUT", 0),
    ]
    assert len(wire.raw) == 1  # no second connection carried a copy


async def test_interim_answers_are_skipped_and_the_final_one_relayed(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def interim(seen: Seen) -> Out:
        if seen.line.startswith(b"GET /api/logic/hints"):
            return Out(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal"
            )
        return Out(OK)

    wire.answer = interim
    gw, key = await gateway_on(make_gateway, wire)
    answer = await send_raw(gw.client.port, get("/api/logic/hints", key))
    assert (answer.status, answer.body, answer.headers.get("x-final")) == (200, b"final", "yes")
    assert "link" not in answer.headers
    await settled(gw)
    assert (await send_raw(gw.client.port, get("/api/logic/next", key))).status == 200
    assert [seen.connection for seen in wire.seen] == [0, 0]


async def test_a_switch_of_protocols_nobody_asked_for_is_502(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def switch(_: Seen) -> Out:
        return Out(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
        )

    wire.answer = switch
    gw, key = await gateway_on(make_gateway, wire)
    assert (await send_raw(gw.client.port, get("/api/logic/up", key))).status == 502
    await asyncio.wait_for(wire.closed[0].wait(), 10)


async def test_bytes_after_a_complete_answer_never_become_the_next_ones(
    make_gateway: GatewayFactory, wire: WireUpstream
) -> None:
    async def desync(seen: Seen) -> Out:
        if seen.line.startswith(b"GET /api/logic/first"):
            return Out(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
        return Out(OK)

    wire.answer = desync
    gw, key = await gateway_on(make_gateway, wire)
    first = await send_raw(gw.client.port, get("/api/logic/first", key))
    assert (first.status, first.body) == (200, b"ok")
    await asyncio.wait_for(wire.closed[0].wait(), 10)  # the connection was dropped
    await settled(gw)
    assert decisions(gw, "upstream_broken") == 0  # the first answer itself was whole
    after = await send_raw(gw.client.port, get("/api/logic/next", key))
    assert (after.status, after.body) == (200, b"ok")
    assert [seen.connection for seen in wire.seen] == [0, 1]
