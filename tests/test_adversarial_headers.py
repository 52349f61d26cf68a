"""Header hygiene on the wire: underscore spellings of the gateway's own headers, method
overrides and oversized header blocks never reach the upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from yarl import URL

from gateway.settings import Limits
from tests.adversarial import RawUpstream, request_bytes, send_raw
from tests.conftest import GatewayFactory, Harness


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.close()


async def on_raw(make_gateway: GatewayFactory, raw: RawUpstream, **overrides: object) -> Harness:
    return await make_gateway(upstreams=(("/", URL(raw.url)),), **overrides)


def family(name: str) -> str:
    return name.lower().replace("_", "-")


async def test_underscore_spellings_of_identity_and_forwarding_headers_are_stripped(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw = await on_raw(make_gateway, raw)
    account = await gw.account("anonymous")
    key = await gw.key(account)
    forged = [
        ("X_Gateway_Account", "victim"),
        ("X-Gateway_Tier", "enterprise"),
        ("X_Gateway_Organization", "org_victim"),
        ("x_gateway_project", "proj_victim"),
        ("X_API_Key", "ask_forged"),
        ("X_Forwarded_For", "10.9.9.9"),
        ("X_Real_IP", "10.9.9.9"),
        ("Proxy_Authorization", "Basic Zm9v"),
    ]
    wire = request_bytes(
        "GET",
        "/api/logic/x",
        [("Authorization", f"Bearer {key}"), ("Connection", "close"), *forged],
    )
    response = await send_raw(gw.client.port, wire)
    assert response.status == 200, response.body
    [seen] = raw.received
    names = [name for name, _ in seen.headers]
    assert not [n for n in names if "_" in n], names
    assert seen.header("X-Gateway-Account") == account
    assert seen.header("X-Gateway-Tier") == "anonymous"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert [v for n, v in seen.headers if family(n) == "x-gateway-account"] == [account]


@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x_http_method_override"],
)
async def test_method_override_headers_never_reach_the_upstream(
    make_gateway: GatewayFactory, raw: RawUpstream, name: str
) -> None:
    gw = await on_raw(make_gateway, raw)
    headers = await gw.caller("anonymous")
    wire = request_bytes("GET", "/api/logic/x", {**headers, name: "POST", "Connection": "close"})
    assert (await send_raw(gw.client.port, wire)).status == 200
    [seen] = raw.received
    assert seen.method == "GET"
    assert seen.header(name) is None
    assert not [n for n, _ in seen.headers if "method" in n.lower()]


async def test_the_method_override_list_is_configurable(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw = await on_raw(make_gateway, raw, method_override_headers=("X-Tunnel-Method",))
    headers = await gw.caller("anonymous")
    wire = request_bytes(
        "GET",
        "/api/logic/x",
        {**headers, "X-Tunnel-Method": "DELETE", "X-Other": "kept", "Connection": "close"},
    )
    assert (await send_raw(gw.client.port, wire)).status == 200
    [seen] = raw.received
    assert seen.header("X-Tunnel-Method") is None
    assert seen.header("X-Other") == "kept"


async def test_a_header_block_over_the_bound_is_431_and_reaches_nothing(
    make_gateway: GatewayFactory, raw: RawUpstream
) -> None:
    gw = await on_raw(make_gateway, raw, limits=Limits(max_header_block_bytes=16 * 1024))
    headers = await gw.caller("anonymous")
    # every line is under the per-line bound; together they pass the block bound
    padding = [(f"X-Pad-{i}", "p" * 4000) for i in range(5)]
    wire = request_bytes(
        "GET", "/api/logic/x", [*headers.items(), ("Connection", "close"), *padding]
    )
    response = await send_raw(gw.client.port, wire)
    assert response.status == 431
    assert response.json()["code"]
    assert raw.received == []
    # just under the bound still passes
    wire = request_bytes(
        "GET", "/api/logic/x", [*headers.items(), ("Connection", "close"), *padding[:3]]
    )
    assert (await send_raw(gw.client.port, wire)).status == 200
