"""When the upstream or the client fails: 502/504 (refunded only when the upstream never got
the request), and streams cut cleanly."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway.proxy.pool import target_label
from gateway.settings import Limits
from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


CHUNK = b"z" * 65536


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def usage(gw: Harness, account: str) -> dict[str, int]:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    meters = (await resp.json())["meters"]
    return {name: meters[name]["used"] for name in ("logic_engine_calls", "api_calls")}


def upstream_label(gw: Harness) -> str:
    return target_label(gw.gateway.settings.upstreams[0][1])


def upstream_errors(gw: Harness, kind: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(
        "gateway_upstream_errors_total", {"upstream": upstream_label(gw), "kind": kind}
    )
    return value or 0.0


def decisions(gw: Harness, outcome: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(
        "gateway_decisions_total", {"tier": "anonymous", "route": "logic", "outcome": outcome}
    )
    return value or 0.0


async def test_upstream_refusing_connections_is_502_and_refunded(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(upstreams=(("/", URL(f"http://127.0.0.1:{closed_port()}")),))
    account = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account)}"}
    resp = await gw.client.post("/api/logic/run", headers=headers)
    assert resp.status == 502
    body = await resp.json()
    assert body["code"] == "UPSTREAM_UNAVAILABLE"
    assert body["message"]
    assert await usage(gw, account) == {"logic_engine_calls": 0, "api_calls": 0}
    assert upstream_errors(gw, "refused") == 1


async def test_upstream_too_slow_is_504_and_stays_charged(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(read_timeout_seconds=0.3)
    gw.upstream.delay["/api/logic/slow"] = 1.5
    account = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account)}"}
    resp = await gw.client.post("/api/logic/slow", headers=headers)
    assert resp.status == 504
    assert (await resp.json())["code"] == "UPSTREAM_TIMEOUT"
    # the upstream got the request and may well have done the work: no refund
    assert await usage(gw, account) == {"logic_engine_calls": 1, "api_calls": 1}
    assert upstream_errors(gw, "timeout") == 1
    # a prompt answer is charged as usual
    resp = await gw.client.post("/api/logic/fast", headers=headers)
    assert resp.status == 200
    assert await usage(gw, account) == {"logic_engine_calls": 2, "api_calls": 2}
    answered = gw.gateway.metrics.registry.get_sample_value(
        "gateway_upstream_duration_seconds_count",
        {"upstream": upstream_label(gw), "route": "logic"},
    )
    assert answered == 1


class Streamer:
    """An upstream that streams a long body and notes how the stream ended."""

    def __init__(self, *, chunks: int, fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.ended = asyncio.Event()
        self.outcome = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            for index in range(self.chunks):
                if index == self.fail_after:
                    assert request.transport is not None
                    request.transport.abort()  # the upstream dies mid-body
                    self.outcome = "aborted"
                    return response
                await response.write(CHUNK)
            await response.write_eof()
            self.outcome = "complete"
        except ConnectionError:
            self.outcome = "peer closed"
        except asyncio.CancelledError:  # aiohttp's test server cancels when the peer leaves
            self.outcome = "peer closed"
            raise
        finally:
            self.ended.set()
        return response


async def streaming_gateway(
    make_gateway: GatewayFactory, aiohttp_server: Any, streamer: Streamer
) -> tuple[Harness, dict[str, str]]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", streamer.handle)
    server = await aiohttp_server(app)
    gw = await make_gateway(upstreams=(("/", server.make_url("")),))
    return gw, await gw.caller("anonymous")


async def test_client_leaving_mid_download_is_no_error(
    make_gateway: GatewayFactory, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    streamer = Streamer(chunks=4096)  # 256 MiB: far more than any socket buffers hold
    gw, headers = await streaming_gateway(make_gateway, aiohttp_server, streamer)
    with caplog.at_level(logging.DEBUG):
        async with aiohttp.ClientSession() as session:
            resp = await session.get(gw.client.make_url("/api/logic/download"), headers=headers)
            assert resp.status == 200
            assert len(await resp.content.readexactly(len(CHUNK))) == len(CHUNK)
            resp.close()  # the client hangs up mid-body
        # the gateway gave up on the upstream too instead of draining it for nobody
        await asyncio.wait_for(streamer.ended.wait(), 10)
    assert streamer.outcome == "peer closed"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert decisions(gw, "client_disconnected") == 1
    assert decisions(gw, "error") == 0
    assert upstream_errors(gw, "broken") == 0  # the client left; the upstream did nothing wrong
    # and it keeps serving
    resp = await gw.client.get("/health")
    assert resp.status == 200


async def test_upstream_dying_mid_body_cuts_the_client_short(
    make_gateway: GatewayFactory, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    streamer = Streamer(chunks=64, fail_after=8)
    gw, headers = await streaming_gateway(make_gateway, aiohttp_server, streamer)
    with caplog.at_level(logging.INFO):
        resp = await gw.client.get("/api/logic/download", headers=headers)
        assert resp.status == 200
        # the client can tell the body is incomplete: it never gets a clean end
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert streamer.outcome == "aborted"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert decisions(gw, "upstream_broken") == 1
    assert upstream_errors(gw, "broken") == 1
    resp = await gw.client.get("/health")
    assert resp.status == 200


async def wait_for_decision(gw: Harness, outcome: str) -> None:
    for _ in range(200):  # bounded: 10 s
        if decisions(gw, outcome):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {outcome} decision recorded")


async def test_client_abandoning_an_upload_is_not_an_upstream_error(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make_gateway()
    caller = await gw.caller("anonymous")
    with caplog.at_level(logging.INFO):
        _, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        writer.write(
            b"POST /api/logic/upload HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n"
            + f"Authorization: {caller['Authorization']}\r\n\r\n".encode()
            + b"only a start"
        )
        await writer.drain()
        writer.close()  # and never the rest
        await wait_for_decision(gw, "bad_request")
    assert upstream_errors(gw, "refused") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_chunked_body_going_bad_midway_is_answered_not_hung(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(limits=Limits(body_idle_seconds=0.5))
    caller = await gw.caller("anonymous")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(
        b"POST /api/logic/upload HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: {caller['Authorization']}\r\n\r\n".encode()
        + b"5\r\nhello\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # so the request is under way before its body goes bad
    writer.write(b"ZZ-not-a-size\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    # aiohttp's parser drops such a body without telling its reader: the body's idle
    # timeout is what frees the handler (and the upstream connection it holds)
    assert answer.startswith((b"HTTP/1.1 408", b"HTTP/1.0 400")), answer
    assert upstream_errors(gw, "refused") == 0


async def test_a_body_gone_silent_is_408(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(limits=Limits(body_idle_seconds=0.5))
    caller = await gw.caller("anonymous")
    forwarded_before = gw.upstream.count()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(
        b"POST /api/logic/upload HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n"
        + f"Authorization: {caller['Authorization']}\r\n\r\n".encode()
        + b"ten bytes."
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert upstream_errors(gw, "refused") == 0
    assert gw.upstream.count() == forwarded_before


async def test_a_stalled_create_leaves_no_live_count(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(limits=Limits(body_idle_seconds=0.5))
    account = await gw.account("anonymous")
    key = await gw.key(account)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(
        b"POST /api/triggers HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n"
        + f"Authorization: Bearer {key}\r\n\r\n".encode()
        + b"{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    meters = (await resp.json())["meters"]
    # nothing was created upstream, so the live count did not rise; the call had reached
    # the upstream before the client stalled, and a stall is not the upstream's fault
    assert meters["triggers"]["used"] == 0
    assert meters["api_calls"]["used"] == 1
