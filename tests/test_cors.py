"""CORS: preflights answered by the gateway and never metered, allow and expose headers on
every response (refusals too), upstream CORS headers overridden, origins matched exactly.

The memory store is enough: a preflight never reaches the store, and what is asserted of
metered calls (a refusal's headers, usage unchanged by a preflight) is store-independent
here; tests/test_store_contract.py holds the stores to the same answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cors import GATEWAY_RESPONSE_HEADERS, Cors
from gateway.policy.source import ConfigError
from gateway.settings import CorsSettings, load_settings
from tests.conftest import GatewayFactory, Harness

APP = "https://app.example.com"
EXPOSED = {
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
    "Retry-After",
    "X-Request-Id",
}


def exposed(headers: object) -> set[str]:
    value = headers.get("Access-Control-Expose-Headers", "")  # type: ignore[attr-defined]
    return {name.strip() for name in value.split(",") if name.strip()}


async def cors_gateway(make_gateway: GatewayFactory, **cors: object) -> Harness:
    settings = CorsSettings(allow_origins=(APP, "https://*.partner.test"), **cors)  # type: ignore[arg-type]
    return await make_gateway(cors=settings)


async def test_a_preflight_is_answered_by_the_gateway_and_costs_nothing(
    make_gateway: GatewayFactory,
) -> None:
    gw = await cors_gateway(make_gateway)
    headers = await gw.caller("anonymous")
    first = await gw.client.post("/api/logic/run", headers=headers)
    remaining = int(first.headers["RateLimit-Remaining"])

    for _ in range(5):
        resp = await gw.client.options(
            "/api/logic/run",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert resp.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in resp.headers["Vary"]

    assert gw.upstream.count() == 1  # only the real call
    after = await gw.client.post("/api/logic/run", headers=headers)
    assert int(after.headers["RateLimit-Remaining"]) == remaining - 1


async def test_a_preflight_from_an_origin_not_allowed_is_an_ordinary_request(
    make_gateway: GatewayFactory,
) -> None:
    gw = await cors_gateway(make_gateway)
    for origin in ("https://evil.test", "https://partner.test", "https://app.example.com.evil"):
        resp = await gw.client.options(
            "/api/logic/run", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        # no credential: the policy's 401, and nothing that lets a browser through
        assert resp.status == 401, origin
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert gw.upstream.count() == 0


async def test_forwarded_and_refused_responses_carry_allow_and_expose_headers(
    make_gateway: GatewayFactory,
) -> None:
    gw = await cors_gateway(make_gateway)
    # an upstream that allows everyone must not widen what the operator allowed
    gw.upstream.reply_headers["/api/logic/x"] = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Accept-Encoding",
    }
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'ask_')}", "Origin": APP}
    await gw.set_usage(account, "logic_engine_calls", 9_999)

    ok = await gw.client.get("/api/logic/x", headers=headers)
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert "Access-Control-Allow-Credentials" not in ok.headers
    assert exposed(ok.headers) >= EXPOSED
    assert ok.headers["Vary"] == "Accept-Encoding, Origin"

    refused = await gw.client.get("/api/logic/x", headers=headers)
    assert refused.status == 429
    assert refused.headers["Access-Control-Allow-Origin"] == APP
    assert exposed(refused.headers) >= EXPOSED
    assert "Retry-After" in refused.headers

    other = await gw.client.get("/api/logic/x", headers={**headers, "Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Expose-Headers" not in other.headers


async def test_a_subdomain_pattern_and_credentials(make_gateway: GatewayFactory) -> None:
    gw = await cors_gateway(make_gateway, allow_credentials=True)
    headers = {**(await gw.caller("anonymous")), "Origin": "https://eu.partner.test"}
    resp = await gw.client.get("/api/logic/x", headers=headers)
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://eu.partner.test"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"


async def test_without_cors_settings_the_gateway_adds_nothing(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.client.options(
        "/api/logic/run", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 401
    assert not [n for n in resp.headers if n.lower().startswith("access-control-")]


async def test_every_header_the_gateway_adds_is_exposed(make_gateway: GatewayFactory) -> None:
    """GATEWAY_RESPONSE_HEADERS is the one list; a new header a phase adds must join it."""
    gw = await make_gateway()
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'ask_')}"}
    await gw.set_usage(account, "logic_engine_calls", 9_999)
    standard = {"content-type", "content-length", "date", "server", "vary"}
    added: set[str] = set()
    for _ in range(2):  # a forwarded 200, then a 429
        resp = await gw.client.get("/api/logic/x", headers=headers)
        added |= {n.lower() for n in resp.headers} - standard
    assert {"ratelimit-remaining", "retry-after", "x-request-id"} <= added
    assert added <= {n.lower() for n in GATEWAY_RESPONSE_HEADERS}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (APP, True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("https://app.example.com:8443", False),
        ("http://app.example.com", False),
        ("https://a.partner.test", True),
        ("https://a.b.partner.test", True),
        ("https://partner.test", False),
        ("https://evilpartner.test", False),
        ("https://a.partner.test/x", False),
        ("null", False),
    ],
)
def test_origin_matching(origin: str, allowed: bool) -> None:
    cors = Cors(CorsSettings(allow_origins=(APP, "https://*.partner.test")))
    assert cors.allowed(origin) is allowed


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("cors:\n  allow_origins: ['https://a.test/']\n", "no path or trailing slash"),
        ("cors:\n  allow_origins: ['*']\n  allow_credentials: true\n", "cannot be used"),
        ("cors:\n  allow_headers: ['X Bad']\n", "expected a header or method name"),
        ("cors:\n  max_age: 5\n", "unknown key"),
    ],
)
def test_bad_cors_settings_name_the_place(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=problem):
        load_settings(str(path))
