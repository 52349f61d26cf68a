"""AgentStack end to end: the seed's anonymous 429 and 403 bodies, FREE limits, live counts."""

from __future__ import annotations

from tests.conftest import GatewayFactory

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

ANON_429 = {
    "error": "Limit exceeded",
    "reason": "Anonymous user limit exceeded",
    "limit": 1000,
    "current": 1001,
    "requires_conversion": True,
    "conversion_url": "/api/auth/convert-anonymous",
    "conversion_message": "Please convert to full account to increase limits. "
    "Anonymous users are limited to 1,000 Logic Engine calls per month.",
}

ANON_403_PROJECTS = {
    "error": "Anonymous users cannot create additional projects",
    "reason": "Anonymous users are limited to 1 project. "
    "Please convert to full account to create more projects.",
    "requires_conversion": True,
    "conversion_url": "/api/auth/convert-anonymous",
    "conversion_message": "Please convert to full account to create additional projects.",
}

ANON_403_KEYS = {
    "error": "Anonymous users cannot create API keys",
    "reason": "Anonymous users are limited to 1 API key (provided at account creation). "
    "Please convert to full account to create additional API keys.",
    "requires_conversion": True,
    "conversion_url": "/api/auth/convert-anonymous",
    "conversion_message": "Please convert to full account to create additional API keys.",
}

ANON_403_PAYMENTS = {
    "error": "Anonymous users cannot process payments",
    "reason": "Payment processing is not available for anonymous users. "
    "Please convert to full account to use payment features.",
    "requires_conversion": True,
    "conversion_url": "/api/auth/convert-anonymous",
    "conversion_message": "Please convert to full account to process payments.",
}


def seed_fields(body: dict[str, object], seed: dict[str, object]) -> dict[str, object]:
    """The body's values for the seed's fields: extra helpful fields may stand beside them."""
    return {key: body.get(key) for key in seed}


async def test_anonymous_key_is_held_at_1000_logic_engine_calls(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(rates=False)  # the quota's count, not the rate's
    headers = await gw.caller("anonymous")
    for i in range(1000):
        resp = await gw.client.post(f"/api/logic/run/{i}", headers=headers)
        assert resp.status == 200, (i, await resp.text())
        await resp.read()
    assert gw.upstream.count("/api/logic/") == 1000

    resp = await gw.client.post("/api/logic/run/1000", headers=headers)
    assert resp.status == 429
    body = await resp.json()
    assert seed_fields(body, ANON_429) == ANON_429
    assert body["meter"] == "logic_engine_calls"
    assert body["reset"] == "2026-12-01T00:00:00Z"
    assert body["retryable"] is True
    assert int(resp.headers["Retry-After"]) == 5 * 86400 + 12 * 3600
    assert resp.headers["RateLimit-Limit"] == "1000"
    assert resp.headers["RateLimit-Remaining"] == "0"
    # the refused call never reached the upstream and consumed nothing
    assert gw.upstream.count("/api/logic/") == 1000


async def test_blocked_operations_get_the_seed_403_bodies(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = await gw.caller("anonymous")
    for method, path, seed in (
        ("POST", "/api/projects", ANON_403_PROJECTS),
        ("POST", "/api/api-keys", ANON_403_KEYS),
        ("POST", "/api/payments/charge", ANON_403_PAYMENTS),
        ("GET", "/api/payments/history", ANON_403_PAYMENTS),
    ):
        resp = await gw.client.request(method, path, headers=headers)
        assert resp.status == 403, path
        body = await resp.json()
        assert seed_fields(body, seed) == seed
        assert body["upgrade_tier"] == "free"
    assert gw.upstream.requests == []


async def test_free_key_is_held_at_10000_logic_engine_calls(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'ask_')}"}
    await gw.set_usage(account, "logic_engine_calls", 9_998)
    for _ in range(2):
        resp = await gw.client.get("/api/logic/x", headers=headers)
        assert resp.status == 200
    resp = await gw.client.get("/api/logic/x", headers=headers)
    assert resp.status == 429
    body = await resp.json()
    assert (body["limit"], body["current"]) == (10_000, 10_001)
    assert body["upgrade_tier"] == "starter"
    assert "requires_conversion" not in body
    assert gw.upstream.count("/api/logic/") == 2


async def test_rate_limit_headers_name_the_tightest_meter(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = await gw.caller("anonymous")
    resp = await gw.client.get("/api/logic/x", headers=headers)
    assert resp.status == 200
    # logic engine (999 left of 1,000) is tighter than API calls (9,999 left of 10,000)
    assert resp.headers["RateLimit-Limit"] == "1000"
    assert resp.headers["RateLimit-Remaining"] == "999"
    assert resp.headers["RateLimit-Reset"] == str(5 * 86400 + 12 * 3600)
    resp = await gw.client.get("/api/things", headers=headers)
    assert resp.headers["RateLimit-Limit"] == "10000"
    assert resp.headers["RateLimit-Remaining"] == "9998"


async def test_webhooks_need_starter_with_402(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.client.post("/api/webhooks/hook", headers=await gw.caller("free", "ask_"))
    assert resp.status == 402
    body = await resp.json()
    assert body["error"] == "Upgrade required"
    assert body["upgrade_tier"] == "starter"
    resp = await gw.client.post("/api/webhooks/hook", headers=await gw.caller("starter", "ask_"))
    assert resp.status == 200


async def test_live_counts_rise_on_2xx_and_fall_on_delete(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(rates=False)  # 22 calls at one instant: the live count's test
    headers = await gw.caller("anonymous")
    gw.upstream.status["/api/triggers"] = 500
    resp = await gw.client.post("/api/triggers", headers=headers)
    assert resp.status == 500  # the upstream failed: nothing was created, nothing counted
    gw.upstream.status.clear()
    for _ in range(20):
        assert (await gw.client.post("/api/triggers", headers=headers)).status == 200
    resp = await gw.client.post("/api/triggers", headers=headers)
    assert resp.status == 429
    assert (await resp.json())["limit"] == 20
    assert (await gw.client.delete("/api/triggers/7", headers=headers)).status == 200
    assert (await gw.client.post("/api/triggers", headers=headers)).status == 200
    assert (await gw.client.post("/api/triggers", headers=headers)).status == 429
