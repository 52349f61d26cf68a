"""AgentIdP end to end: organisations by JWT, daily counters, agents as a live count."""

from __future__ import annotations

from typing import Any

from tests.conftest import GatewayFactory, Harness, org_headers, utc

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

DAY_END = utc(2026, 11, 25, 23, 59, 59)
NEXT_DAY = utc(2026, 11, 26)


async def org(gw: Harness, name: str = "acme", tier: str = "free") -> tuple[str, dict[str, str]]:
    """An organisation account made through the admin API, and its token's headers."""
    account_id = await gw.account(tier, organization_id=name)
    assert account_id == f"org:{name}"
    return account_id, org_headers(name)


async def usage(gw: Harness, account_id: str) -> dict[str, Any]:
    resp = await gw.admin.get(f"/admin/accounts/{account_id}/usage", headers=gw.admin_headers)
    assert resp.status == 200
    meters: dict[str, Any] = (await resp.json())["meters"]
    return {name: state["used"] for name, state in meters.items()}


async def assert_limit_exceeded(
    gw: Harness, method: str, path: str, headers: dict[str, str], meter: str, limit: int
) -> dict[str, Any]:
    before = gw.upstream.count()
    resp = await gw.client.request(method, path, headers=headers)
    assert resp.status == 403, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["code"] == "FREE_TIER_LIMIT_EXCEEDED"
    assert body["details"]["meter"] == meter
    assert body["details"]["limit"] == limit
    assert body["details"]["current"] == limit + 1
    assert gw.upstream.count() == before  # the refused request never reached the upstream
    return body


async def test_org_token_is_held_at_1000_calls_per_utc_day(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp", rates=False)  # the daily quota's count, not the rate's
    headers = org_headers("never-seen-org")  # no account: the default tier, free
    for i in range(1000):
        resp = await gw.client.get(f"/api/v1/agents/{i}", headers=headers)
        assert resp.status == 200, (i, await resp.text())
        await resp.read()
    assert gw.upstream.count("/api/v1/agents/") == 1000
    body = await assert_limit_exceeded(gw, "GET", "/api/v1/agents/x", headers, "api_calls", 1000)
    assert body["details"]["tier"] == "free"
    assert body["details"]["reset"] == "2026-11-26T00:00:00Z"
    assert body["details"]["upgrade_tier"] == "pro"
    assert body["message"] == (
        "The free tier allows 1,000 API calls per day; this request would make 1,001."
    )

    # a second before midnight it is still refused; at midnight UTC the day is fresh
    gw.clock.set(DAY_END)
    await assert_limit_exceeded(gw, "GET", "/api/v1/agents/x", headers, "api_calls", 1000)
    gw.clock.set(NEXT_DAY)
    resp = await gw.client.get("/api/v1/agents/x", headers=headers)
    assert resp.status == 200
    assert resp.headers["RateLimit-Remaining"] == "999"
    assert gw.upstream.count("/api/v1/agents/") == 1001


async def test_token_issuances_are_held_at_1000_per_day(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    account_id, headers = await org(gw)
    await gw.set_usage(account_id, "token_issuances", 999)
    resp = await gw.client.post("/api/v1/token", headers=headers)
    assert resp.status == 200
    assert await usage(gw, account_id) == {"agents": 0, "api_calls": 1, "token_issuances": 1000}
    await assert_limit_exceeded(gw, "POST", "/api/v1/token", headers, "token_issuances", 1000)
    # other calls still pass: only issuances are exhausted
    resp = await gw.client.get("/api/v1/agents", headers=headers)
    assert resp.status == 200
    gw.clock.set(NEXT_DAY)
    resp = await gw.client.post("/api/v1/token", headers=headers)
    assert resp.status == 200
    assert await usage(gw, account_id) == {"agents": 0, "api_calls": 1, "token_issuances": 1}


async def test_agents_are_a_live_count(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    account_id, headers = await org(gw)
    for _ in range(10):
        resp = await gw.client.post("/api/v1/agents", headers=headers)
        assert resp.status == 200, await resp.text()
    await assert_limit_exceeded(gw, "POST", "/api/v1/agents", headers, "agents", 10)
    assert (await usage(gw, account_id))["agents"] == 10

    # decommissioning frees one at once
    resp = await gw.client.post("/api/v1/agents/a1/decommission", headers=headers)
    assert resp.status == 200
    assert (await usage(gw, account_id))["agents"] == 9
    resp = await gw.client.post("/api/v1/agents", headers=headers)
    assert resp.status == 200
    await assert_limit_exceeded(gw, "POST", "/api/v1/agents", headers, "agents", 10)

    # and so does deleting
    resp = await gw.client.delete("/api/v1/agents/a2", headers=headers)
    assert resp.status == 200
    resp = await gw.client.post("/api/v1/agents", headers=headers)
    assert resp.status == 200
    await assert_limit_exceeded(gw, "POST", "/api/v1/agents", headers, "agents", 10)

    # a live count is not a daily counter: the next day changes nothing
    gw.clock.set(NEXT_DAY)
    await assert_limit_exceeded(gw, "POST", "/api/v1/agents", headers, "agents", 10)


async def test_a_failed_create_or_release_changes_no_live_count(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway("agentidp")
    account_id, headers = await org(gw)
    gw.upstream.status["/api/v1/agents"] = 409
    for _ in range(12):
        resp = await gw.client.post("/api/v1/agents", headers=headers)
        assert resp.status == 409  # the upstream's answer, passed through
    assert await usage(gw, account_id) == {"agents": 0, "api_calls": 12, "token_issuances": 0}
    del gw.upstream.status["/api/v1/agents"]
    resp = await gw.client.post("/api/v1/agents", headers=headers)
    assert resp.status == 200
    # a decommission the upstream refuses frees nothing
    gw.upstream.status["/api/v1/agents/a1/decommission"] = 404
    resp = await gw.client.post("/api/v1/agents/a1/decommission", headers=headers)
    assert resp.status == 404
    assert (await usage(gw, account_id))["agents"] == 1


async def test_tier_set_to_pro_raises_the_limits(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    account_id, headers = await org(gw)
    await gw.set_usage(account_id, "api_calls", 1000)
    await gw.set_usage(account_id, "agents", 10)
    await assert_limit_exceeded(gw, "GET", "/api/v1/agents", headers, "api_calls", 1000)

    resp = await gw.admin.put(
        f"/admin/accounts/{account_id}/tier", json={"tier": "pro"}, headers=gw.admin_headers
    )
    assert resp.status == 200
    resp = await gw.client.post("/api/v1/agents", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["RateLimit-Limit"] == "100"  # agents: the tightest meter now
    assert resp.headers["RateLimit-Remaining"] == "89"
    resp = await gw.client.get("/api/v1/agents", headers=headers)
    assert resp.headers["RateLimit-Limit"] == "50000"

    await gw.set_usage(account_id, "api_calls", 50_000)
    body = await assert_limit_exceeded(gw, "GET", "/api/v1/agents", headers, "api_calls", 50_000)
    assert body["details"]["tier"] == "pro"
    assert body["details"]["upgrade_tier"] == "enterprise"

    resp = await gw.admin.put(
        f"/admin/accounts/{account_id}/tier", json={"tier": "enterprise"}, headers=gw.admin_headers
    )
    assert resp.status == 200
    resp = await gw.client.get("/api/v1/agents", headers=headers)
    assert resp.status == 200
    assert "RateLimit-Limit" not in resp.headers  # nothing limits an enterprise organisation


async def test_health_needs_no_token(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    resp = await gw.client.get("/health")
    assert resp.status == 200
    resp = await gw.client.get("/api/v1/agents")
    assert resp.status == 401
    assert (await resp.json())["code"] == "UNAUTHORIZED"
