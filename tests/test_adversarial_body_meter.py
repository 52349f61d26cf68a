"""Chunked storage writes are charged as they flow: never free, and the upstream never gets a
byte past what is left of the allowance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from yarl import URL

from tests.adversarial import RawUpstream, chunked, read_response, request_bytes, send_raw
from tests.conftest import GatewayFactory, Harness

STORES = ("memory", "redis")
LIMIT = 20_000_000  # the anonymous tier's json_storage: 20 MB


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.close()


async def used(gw: Harness, account: str, meter: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"][meter]["used"])


async def writer_for(make_gateway: GatewayFactory, raw: RawUpstream) -> tuple[Harness, str, str]:
    gw = await make_gateway(upstreams=(("/", URL(raw.url)),))
    account = await gw.account("anonymous")
    return gw, account, await gw.key(account)


async def test_a_chunked_write_is_charged_like_a_declared_one(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw, account, key = await writer_for(make_gateway, raw)
    head = {"Authorization": f"Bearer {key}", "Connection": "close"}
    body = chunked(b"a" * 400, b"b" * 600)
    wire = request_bytes("POST", "/api/data/x", {**head, "Transfer-Encoding": "chunked"}, body)
    assert (await send_raw(gw.client.port, wire)).status == 200
    assert await used(gw, account, "json_storage") == 1000
    assert raw.received[-1].body == b"a" * 400 + b"b" * 600
    # the same bytes declared up front cost the same
    wire = request_bytes("POST", "/api/data/y", {**head, "Content-Length": "1000"}, b"c" * 1000)
    assert (await send_raw(gw.client.port, wire)).status == 200
    assert await used(gw, account, "json_storage") == 2000


async def test_a_chunked_write_past_the_allowance_is_cut_before_the_upstream_gets_it(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw, account, key = await writer_for(make_gateway, raw)
    await gw.set_usage(account, "json_storage", LIMIT - 1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(
        request_bytes(
            "POST",
            "/api/data/x",
            {"Authorization": f"Bearer {key}", "Transfer-Encoding": "chunked"},
        )
        + b"258\r\n"
        + b"a" * 600
        + b"\r\n"
    )
    await writer.drain()
    await asyncio.wait_for(raw.arrived.wait(), 10)
    try:
        # 600 + 600 would pass the 1000 bytes left
        writer.write(b"258\r\n" + b"b" * 600 + b"\r\n0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass
    response = await read_response(reader)
    writer.close()
    assert response.status == 429, response.body
    assert response.json()["reason"]
    # no byte past the allowance reached the upstream, and what did is not kept
    upstream_bytes = b"".join(raw.raw)
    assert b"bbbb" not in upstream_bytes
    assert raw.received == []
    assert await used(gw, account, "json_storage") == LIMIT - 1000
