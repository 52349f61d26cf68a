"""Header hygiene through real HTTP: identity headers, hop-by-hop headers, X-Forwarded-*."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import jwt
from aiohttp import web
from multidict import CIMultiDict

from gateway.proxy.headers import HOP_BY_HOP
from tests.conftest import JWT_SECRET, GatewayFactory

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


SPOOFED = CIMultiDict(
    [
        ("X-Gateway-Account", "acct_victim"),
        ("x-gateway-tier", "enterprise"),
        ("X-GATEWAY-PROJECT", "proj_victim"),
        ("x-Gateway-Key-Id", "key_victim"),
        ("X-Gateway-Organization", "org_victim"),
        ("X-Gateway-Route", "free-lunch"),
        ("X-Gateway-Anything", "internal"),
        # a second copy, in case only the first of a repeated name were stripped
        ("x-gateway-account", "acct_victim_2"),
    ]
)


def gateway_headers(seen: dict[str, str]) -> dict[str, str]:
    """The X-Gateway-* headers the upstream saw, each name exactly once whatever its case."""
    names = [k.lower() for k in seen if k.lower().startswith("x-gateway-")]
    assert len(names) == len(set(names)), f"an identity header arrived twice: {names}"
    return {k.lower(): v for k, v in seen.items() if k.lower().startswith("x-gateway-")}


async def issue_key(
    gw: Any, account_id: str, prefix: str, project_id: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"prefix": prefix}
    if project_id is not None:
        body["project_id"] = project_id
    resp = await gw.admin.post(
        f"/admin/accounts/{account_id}/keys", json=body, headers=gw.admin_headers
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


def test_hop_by_hop_set_is_exactly_the_rfc_names() -> None:
    # spelled out here rather than derived, so a missing comma in the source (which would
    # join two names into one) or a dropped name fails this test
    assert {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    } == HOP_BY_HOP


async def test_spoofed_identity_headers_never_reach_the_upstream(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account = await gw.account("free")
    project = await gw.admin.post(
        f"/admin/accounts/{account}/projects", json={"name": "p"}, headers=gw.admin_headers
    )
    project_id = (await project.json())["id"]
    key = await issue_key(gw, account, "ask_", project_id)

    headers = CIMultiDict(SPOOFED)
    headers["Authorization"] = f"Bearer {key['key']}"
    resp = await gw.client.get("/api/things", headers=headers)
    assert resp.status == 200, await resp.text()

    seen = gw.upstream.requests[-1].headers
    assert gateway_headers(seen) == {
        "x-gateway-account": account,
        "x-gateway-tier": "free",
        "x-gateway-project": str(project_id),
        "x-gateway-key-id": key["id"],
        "x-gateway-route": "api",
    }
    # the gateway's key is its own: the upstream never sees it
    assert "authorization" not in {k.lower() for k in seen}
    assert key["key"] not in repr(seen)


async def test_api_key_header_is_not_forwarded(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await gw.account("anonymous")
    key = await issue_key(gw, account, "anon_ask_", None)
    headers = CIMultiDict(SPOOFED)
    headers["X-API-Key"] = key["key"]
    resp = await gw.client.get("/api/logic/run", headers=headers)
    assert resp.status == 200, await resp.text()
    seen = gw.upstream.requests[-1].headers
    assert key["key"] not in repr(seen)
    assert gateway_headers(seen) == {
        "x-gateway-account": account,
        "x-gateway-tier": "anonymous",
        "x-gateway-key-id": key["id"],
        "x-gateway-route": "logic",
    }


async def test_a_gateway_key_is_not_forwarded_on_an_open_route(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("anonymous")
    resp = await gw.client.get("/health", headers={**headers, "X-Gateway-Tier": "enterprise"})
    assert resp.status == 200
    seen = gw.upstream.requests[-1].headers
    assert "authorization" not in {k.lower() for k in seen}
    assert gateway_headers(seen) == {}
    # credentials that are not the gateway's are the upstream's business, and pass
    resp = await gw.client.get("/health", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 200
    assert gw.upstream.requests[-1].headers["Authorization"] == "Basic dXNlcjpwYXNz"


async def test_jwt_caller_gets_organization_and_keeps_its_authorization(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway("agentidp")
    token = jwt.encode(
        {"organization_id": "org_acme", "exp": int(time.time()) + 600},
        JWT_SECRET,
        algorithm="HS256",
    )
    headers = CIMultiDict(SPOOFED)
    headers["Authorization"] = f"Bearer {token}"
    resp = await gw.client.get("/api/v1/agents", headers=headers)
    assert resp.status == 200, await resp.text()
    seen = gw.upstream.requests[-1].headers
    injected = gateway_headers(seen)
    assert injected["x-gateway-organization"] == "org_acme"
    assert injected["x-gateway-tier"] == "free"
    assert injected["x-gateway-account"] not in ("acct_victim", "acct_victim_2")
    assert "x-gateway-project" not in injected
    assert "x-gateway-key-id" not in injected
    # the upstream may verify the token itself
    assert seen["Authorization"] == f"Bearer {token}"


async def test_connection_named_headers_are_dropped_both_ways(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    seen: list[CIMultiDict[str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(CIMultiDict(request.headers))
        return web.Response(
            text="ok",
            headers=CIMultiDict(
                [
                    ("Connection", "x-secret-a, X-Secret-B"),
                    ("X-Secret-A", "upstream-internal"),
                    ("X-Secret-B", "upstream-internal"),
                    ("Keep-Alive", "timeout=5"),
                    ("Proxy-Authenticate", "Basic"),
                    ("X-Gateway-Debug", "upstream-internal"),
                    ("X-Kept", "yes"),
                ]
            ),
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    gw = await make_gateway(upstreams=(("/", server.make_url("")),))
    resp = await gw.client.get(
        "/api/things",
        headers={
            **(await gw.caller("anonymous")),
            "Connection": "keep-alive, x-foo, X-Bar",
            "X-Foo": "client-hop",
            "x-bar": "client-hop",
            "Keep-Alive": "timeout=100",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Proxy-Connection": "keep-alive",
            "X-Kept": "yes",
        },
    )
    assert resp.status == 200
    upstream_saw = {k.lower() for k in seen[-1]}
    for name in ("x-foo", "x-bar", "te", "trailer", "proxy-authorization", "proxy-connection"):
        assert name not in upstream_saw, name
    # aiohttp's client adds its own Connection/Keep-Alive framing; the client's values are gone
    assert seen[-1].get("Keep-Alive") != "timeout=100"
    assert "x-foo" not in seen[-1].get("Connection", "").lower()
    assert seen[-1]["X-Kept"] == "yes"

    client_saw = {k.lower() for k in resp.headers}
    for name in ("x-secret-a", "x-secret-b", "proxy-authenticate", "x-gateway-debug"):
        assert name not in client_saw, name
    assert resp.headers.get("Keep-Alive") != "timeout=5"
    assert resp.headers["X-Kept"] == "yes"


async def test_forwarded_headers_from_an_untrusted_peer_are_replaced(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    resp = await gw.client.get(
        "/api/things",
        headers={
            **(await gw.caller("anonymous")),
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "bank.example",
            "Forwarded": "for=203.0.113.7;proto=https",
            "X-Real-IP": "203.0.113.7",
        },
    )
    assert resp.status == 200
    seen = gw.upstream.requests[-1].headers
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == f"127.0.0.1:{gw.client.port}"
    assert "Forwarded" not in seen
    assert "X-Real-IP" not in seen


async def test_forwarded_headers_from_a_trusted_proxy_extend_its_chain(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    caller = await gw.caller("anonymous")
    resp = await gw.client.get(
        "/api/things",
        headers={
            **caller,
            "X-Forwarded-For": "203.0.113.7, 198.51.100.2",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example",
        },
    )
    assert resp.status == 200
    seen = gw.upstream.requests[-1].headers
    assert seen["X-Forwarded-For"] == "203.0.113.7, 198.51.100.2, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["X-Forwarded-Host"] == "api.example"

    # a trusted proxy that sent nothing: the chain starts at the peer
    resp = await gw.client.get("/api/things", headers=caller)
    seen = gw.upstream.requests[-1].headers
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
